#include "core/output_dir.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace llmq {
namespace fs = std::filesystem;

Expected<StagedOutputDir> StagedOutputDir::create(const std::string& target, bool force) {
  std::error_code ec;
  if (fs::exists(target, ec) && !force)
    return Status::error(target + ": output exists (pass --force to replace it)");
  const fs::path parent = fs::absolute(target, ec).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec))
    return Status::error(target + ": parent directory " + parent.string() + " does not exist");
  std::string staging = target + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(staging, ec);
  if (!fs::create_directory(staging, ec))
    return Status::error(staging + ": cannot create staging directory: " + ec.message());
  return StagedOutputDir(target, staging, force);
}

StagedOutputDir::StagedOutputDir(StagedOutputDir&& o) noexcept
    : target_(std::move(o.target_)), staging_(std::move(o.staging_)), force_(o.force_), done_(o.done_) {
  o.done_ = true;
}

StagedOutputDir::~StagedOutputDir() {
  if (done_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

Status StagedOutputDir::commit() {
  std::error_code ec;
  if (fs::exists(target_, ec)) {
    if (!force_) return Status::error(target_ + ": output appeared while writing; not replaced");
    fs::remove_all(target_, ec);
    if (ec) return Status::error(target_ + ": cannot remove old output: " + ec.message());
  }
  fs::rename(staging_, target_, ec);
  if (ec) return Status::error(target_ + ": cannot move output into place: " + ec.message());
  done_ = true;
  return Status::ok();
}

Status write_file_atomic(const std::string& path, const std::string& bytes, bool force) {
  std::error_code ec;
  if (fs::exists(path, ec) && !force) return Status::error(path + ": output exists (pass --force to replace it)");
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return Status::error(tmp + ": cannot open for writing");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) return Status::error(tmp + ": write failed");
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return Status::error(path + ": cannot move into place");
  }
  return Status::ok();
}

}  // namespace llmq
