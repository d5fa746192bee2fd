// Host memory of one handler call besides its inputs and outputs, pooled across calls.
#ifndef INSTANT4D_RASTERIZER_CPU_WORKSPACE_H_
#define INSTANT4D_RASTERIZER_CPU_WORKSPACE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "binning.h"
#include "common.h"

namespace instant4d {
namespace cpu {

// A buffer whose contents are left uninitialised (every user writes before reading).
template <typename T>
class RawBuffer {
 public:
  T* Get(size_t n) {
    if (n > capacity_) {
      data_.reset();
      data_.reset(new T[n]);
      capacity_ = n;
    }
    return data_.get();
  }
  size_t bytes() const { return capacity_ * sizeof(T); }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
};

// All the host memory one handler call needs besides its inputs and outputs. Workspaces are pooled
// across calls: reusing their (grown) buffers avoids page-faulting tens of MiB on every call, which
// costs as much as a good part of the backward itself.
struct Workspace {
  Binning bin;
  BinTemps tmp;
  RawBuffer<float> rows;             // backward: gradient rows of a wave
  std::vector<float> bg_partial;     // backward: per-tile background gradients
  std::vector<int64_t> cursor;       // backward: per-Gaussian progress through its entries
  std::vector<Scratch> scratch;      // per thread

  size_t Bytes() const {
    size_t total = rows.bytes() + BinningBytes(bin);
    auto add = [&total](const auto& v) { total += v.capacity() * sizeof(v[0]); };
    add(tmp.tile_count);
    add(tmp.tile_offset);
    add(tmp.packed_by_index);
    add(tmp.keys);
    add(tmp.keys2);
    add(tmp.sorted2);
    for (const SetupBlock& b : tmp.blocks) add(b.tiles);
    for (const FillChunk& c : tmp.chunks) add(c.cursor);
    add(bg_partial);
    add(cursor);
    return total;
  }
};

// Process-wide pool of idle workspaces (concurrent calls each take their own).
class WorkspacePool {
 public:
  static WorkspacePool& Get() {
    static WorkspacePool* pool = new WorkspacePool();  // never destroyed: safe at process exit
    return *pool;
  }
  std::unique_ptr<Workspace> Acquire() {
    std::lock_guard<std::mutex> lk(mu_);
    if (idle_.empty()) return std::make_unique<Workspace>();
    std::unique_ptr<Workspace> ws = std::move(idle_.back());
    idle_.pop_back();
    return ws;
  }
  void Release(std::unique_ptr<Workspace> ws) {
    if (!ws || ws->Bytes() > kMaxCachedBytes) return;  // a very large workspace is given back to the OS
    std::lock_guard<std::mutex> lk(mu_);
    if (idle_.size() < kMaxIdle) idle_.push_back(std::move(ws));
  }

 private:
  static constexpr size_t kMaxIdle = 4;
  static constexpr size_t kMaxCachedBytes = size_t{512} << 20;
  std::mutex mu_;
  std::vector<std::unique_ptr<Workspace>> idle_;
};

struct WorkspaceLease {
  std::unique_ptr<Workspace> ws = WorkspacePool::Get().Acquire();
  ~WorkspaceLease() { WorkspacePool::Get().Release(std::move(ws)); }
};

}  // namespace cpu
}  // namespace instant4d

#endif  // INSTANT4D_RASTERIZER_CPU_WORKSPACE_H_
