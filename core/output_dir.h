// Outputs appear complete or not at all: a StagedOutputDir is a temporary directory beside
// the target ("<target>.tmp-<pid>"); commit() renames it into place. An existing target is
// refused unless force is set (then it is replaced only at commit, so a failed run never
// destroys the previous output). A staged dir that is never committed is removed.
#pragma once

#include <string>

#include "core/status.h"

namespace llmq {

class StagedOutputDir {
 public:
  static Expected<StagedOutputDir> create(const std::string& target, bool force);
  StagedOutputDir(StagedOutputDir&& other) noexcept;
  StagedOutputDir& operator=(StagedOutputDir&&) = delete;
  StagedOutputDir(const StagedOutputDir&) = delete;
  ~StagedOutputDir();

  const std::string& path() const { return staging_; }  // write files here
  const std::string& target() const { return target_; }
  Status commit();

 private:
  StagedOutputDir(std::string target, std::string staging, bool force)
      : target_(std::move(target)), staging_(std::move(staging)), force_(force) {}
  std::string target_;
  std::string staging_;
  bool force_ = false;
  bool done_ = false;
};

// Writes a whole file atomically (temp file + rename) and refuses to overwrite without force.
Status write_file_atomic(const std::string& path, const std::string& bytes, bool force);

}  // namespace llmq
