// Status / Expected<T>: the one error channel for expected failures (bad files, bad options).
// A message names the file and the problem in one line; the CLI prints it and exits with 2.
// Invariants that can only fail through a bug use LLMQ_CHECK (core/check.h) instead.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace llmq {

class Status {
 public:
  Status() = default;  // ok
  static Status ok() { return Status(); }
  static Status error(std::string message) { return Status(std::move(message)); }

  bool is_ok() const { return !failed_; }
  explicit operator bool() const { return is_ok(); }
  const std::string& message() const { return message_; }

  // Prefixes the message with context, e.g. the file name: "FILE: problem".
  Status with_context(const std::string& context) const {
    return is_ok() ? *this : Status(context + ": " + message_);
  }

 private:
  explicit Status(std::string message) : failed_(true), message_(std::move(message)) {}
  bool failed_ = false;
  std::string message_;
};

template <class T>
class Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}             // NOLINT: implicit by design
  Expected(Status status) : v_(std::move(status)) {}      // NOLINT: must be an error
  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  Status status() const { return has_value() ? Status::ok() : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

// Thrown only at the CLI boundary (and by code paths that cannot return a Status, such as
// constructors used by the CLI): carries a one-line message and maps to exit code 2.
struct InputError {
  std::string message;
};

}  // namespace llmq

#define LLMQ_CONCAT_INNER_(a, b) a##b
#define LLMQ_CONCAT_(a, b) LLMQ_CONCAT_INNER_(a, b)

#define LLMQ_RETURN_IF_ERROR(expr)                  \
  do {                                              \
    ::llmq::Status llmq_status_ = (expr);           \
    if (!llmq_status_.is_ok()) return llmq_status_; \
  } while (0)

#define LLMQ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.has_value()) return tmp.status();        \
  lhs = std::move(tmp).value()

// LLMQ_ASSIGN_OR_RETURN(auto x, make_x()); returns the error Status when make_x() failed.
#define LLMQ_ASSIGN_OR_RETURN(lhs, expr) \
  LLMQ_ASSIGN_OR_RETURN_IMPL_(LLMQ_CONCAT_(llmq_expected_, __LINE__), lhs, expr)
