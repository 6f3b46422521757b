// HfDirectoryWriter: a Hugging Face model directory published by the DCP writer's rule.
//
// Hugging Face's names are fixed (`model.safetensors`, `model-0000i-of-0000N.safetensors`), so
// a save that replaces a checkpoint of the same shape would write over files the old index
// still names. Instead every file is first written under `.dcpp-<id>.<name>` (hidden: no
// reader takes it for a checkpoint file), and the index that commits names those. Once that is
// published the old files go, each shard is hard-linked to its final name, and a second index
// naming the final names is renamed over the first; the hidden names go last. One file without
// an index to replace is renamed straight to `model.safetensors`. The record lists every name
// this save may create, so a crash between any two steps leaves files the next save proves its
// own and removes unless the index then published names them.
module;
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.safetensors;

namespace dcp::storage {
namespace fs = std::filesystem;
using namespace publishing;

namespace {
constexpr std::string_view kSingleFile = "model.safetensors";
}  // namespace

HfDirectoryWriter::HfDirectoryWriter(fs::path dir, bool overwrite, bool sync_files)
    : dir_(absolute_target(dir)), overwrite_(overwrite), sync_(sync_files), save_id_(new_save_id()) {}

HfDirectoryWriter::~HfDirectoryWriter() {
  abort();
  if (lock_fd_ >= 0) ::close(lock_fd_);
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

void HfDirectoryWriter::begin(std::vector<std::string> names) {
  if (names.empty()) throw Error(Errc::invalid_argument, "a model directory needs at least one file").in_file(dir_.string());
  finals_ = std::move(names);
  std::error_code ec;
  if (!fs::exists(dir_, ec)) {
    if (!fs::create_directories(dir_, ec) && ec) throw os_error(dir_, "cannot create the checkpoint directory", ec.value());
    created_target_ = true;
  }
  dir_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) {
    const int err = errno;
    if (err == ENOTDIR) refuse(dir_, "exists and is not a directory");
    throw os_error(dir_, "cannot open the checkpoint directory", err);
  }
  lock_fd_ = lock_directory(dir_fd_, dir_);
  if (lock_fd_ >= 0 && remove_leftovers(dir_fd_, dir_, save_id_) && sync_) sync_dir_fd(dir_fd_, dir_);

  if (entry_stat(dir_fd_, ".metadata", dir_))
    refuse(dir_, "holds a DCP checkpoint (.metadata); write the Hugging Face layout into another directory");
  const std::string index(safetensors::kIndexFile);
  if (const auto st = entry_stat(dir_fd_, index, dir_); st && !S_ISREG(st->st_mode))
    refuse(dir_ / index, "is not a regular file (a link or another kind of entry); refusing to replace it");
  const auto old = hf_files(dir_fd_, dir_);
  if (!old) refuse(dir_ / index, "cannot be read; refusing to replace the checkpoint it describes");
  for (const auto& name : *old) {
    const auto st = entry_stat(dir_fd_, name, dir_);
    if (!st) continue;  // named by the index but missing: nothing to replace
    if (!S_ISREG(st->st_mode))
      refuse(dir_ / name, "is not a regular file (a link or another kind of entry); refusing to replace it");
    replaces_.push_back(name);
  }
  had_index_ = entry_stat(dir_fd_, index, dir_).has_value();
  if (!replaces_.empty() && !overwrite_)
    refuse(dir_, "already holds a checkpoint; overwrite it explicitly (--overwrite) to replace it");
  for (const auto& name : finals_)
    if (entry_stat(dir_fd_, name, dir_) && !old->contains(name))
      refuse(dir_ / name, "is in the way and belongs to no checkpoint this save replaces; refusing to replace it");

  SaveRecord record{save_id_, "", 0, replaces_, true, Layout::hf, {}};
  for (const auto& name : finals_) {
    hidden_.push_back(pending_name(save_id_, "." + name));
    record.creates.push_back(hidden_.back());
    record.creates.push_back(name);
  }
  record.creates.push_back(pending_name(save_id_, ".index.json"));
  recorded_ = true;
  write_record(dir_fd_, dir_, record, sync_);
  for (const auto& name : hidden_)
    files_.push_back(std::make_unique<OutputFile>(dir_fd_, name, dir_ / name, WritePath::buffered));
}

void HfDirectoryWriter::rename_index(std::span<const std::string> names, std::uint64_t total_size,
                                     std::span<const std::pair<std::string, std::size_t>> weight_map) {
  std::vector<std::pair<std::string, std::string>> map;
  map.reserve(weight_map.size());
  for (const auto& [key, shard] : weight_map) map.emplace_back(key, names[shard]);
  const auto text = safetensors::encode_index(total_size, map);
  const auto pending = pending_name(save_id_, ".index.json");
  {
    OutputFile file(dir_fd_, pending, dir_ / pending);
    file.write(std::as_bytes(std::span(text.data(), text.size())));
    file.close(sync_);
  }
  const std::string index(safetensors::kIndexFile);
  if (::renameat(dir_fd_, pending.c_str(), dir_fd_, index.c_str()) != 0)
    throw os_error(dir_ / index, "cannot publish the new index", errno);
  if (sync_) sync_dir_fd(dir_fd_, dir_);
}

void HfDirectoryWriter::publish(std::span<const std::uint64_t> sizes, std::uint64_t total_size,
                                std::span<const std::pair<std::string, std::size_t>> weight_map) {
  if (!recorded_ || sizes.size() != files_.size())
    throw Error(Errc::failed_precondition, "publish without begin, or with the wrong number of files").in_file(dir_.string());
  for (std::size_t i = 0; i < files_.size(); ++i) files_[i]->close(sync_, sizes[i]);
  files_.clear();
  if (sync_) sync_dir_fd(dir_fd_, dir_);  // every file's entry is durable before the commit

  const std::string single(kSingleFile);
  const bool one_file = finals_.size() == 1 && finals_[0] == single;
  if (one_file && !had_index_) {
    if (::renameat(dir_fd_, hidden_[0].c_str(), dir_fd_, single.c_str()) != 0)
      throw os_error(dir_ / single, "cannot publish the new file", errno);
    published_ = true;
    hidden_.clear();
  } else {
    rename_index(hidden_, total_size, weight_map);
    published_ = true;
  }

  // Published: the old checkpoint's files go, then the new files get their final names.
  {
    if (sync_ && one_file && !had_index_) sync_dir_fd(dir_fd_, dir_);
    const std::set<std::string, std::less<>> keep{std::string(safetensors::kIndexFile)};
    std::size_t kept = 0;
    for (const auto& name : replaces_)
      if (!keep.contains(name) && !(one_file && !had_index_ && name == single) && !remove_regular(dir_fd_, name)) ++kept;
    if (kept != 0)
      throw Error(Errc::io, "cannot remove " + std::to_string(kept) +
                                " file(s) of the replaced checkpoint (the next save into this directory retries)")
          .in_file(dir_.string());
    if (!hidden_.empty()) {
      for (std::size_t i = 0; i < hidden_.size(); ++i)
        if (::linkat(dir_fd_, hidden_[i].c_str(), dir_fd_, finals_[i].c_str(), 0) != 0)
          throw os_error(dir_ / finals_[i], "cannot link the new file to its name", errno);
      if (sync_) sync_dir_fd(dir_fd_, dir_);
      if (one_file) {
        // One file needs no index: without it, `model.safetensors` alone is the checkpoint.
        if (::unlinkat(dir_fd_, std::string(safetensors::kIndexFile).c_str(), 0) != 0)
          throw os_error(dir_ / safetensors::kIndexFile, "cannot remove the index of a one-file checkpoint", errno);
        if (sync_) sync_dir_fd(dir_fd_, dir_);
      } else {
        rename_index(finals_, total_size, weight_map);
      }
      for (const auto& name : hidden_) (void)remove_regular(dir_fd_, name);
    }
    (void)remove_regular(dir_fd_, record_name(save_id_));
    if (sync_) sync_dir_fd(dir_fd_, dir_);
  }
}

void HfDirectoryWriter::abort() noexcept {
  if (published_ || dir_fd_ < 0) return;
  files_.clear();
  if (recorded_) {
    bool all = true;
    for (const auto& name : hidden_) all = remove_regular(dir_fd_, name) && all;
    all = remove_regular(dir_fd_, pending_name(save_id_, ".index.json")) && all;
    if (all) (void)remove_regular(dir_fd_, record_name(save_id_));
    if (sync_) (void)::fsync(dir_fd_);
    recorded_ = false;
  }
  if (created_target_) (void)::rmdir(dir_.c_str());
  created_target_ = false;
}

}  // namespace dcp::storage
