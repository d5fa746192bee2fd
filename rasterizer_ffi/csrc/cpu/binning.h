// Binning of one image (stage 1 of the CPU rasterizer): which Gaussians touch which 16x16 tile, in
// (depth, index) order per tile; and the cache that hands a forward's binning to its backward.
//
//   1. set up the binning of every Gaussian (gaussian.h: conservative ellipse box + exact per-tile
//      test), drop radii == 0 and Gaussians that can reach no pixel;
//   2. sort the rest by (depth, index) with a stable LSD radix sort on the 32-bit depth key;
//   3. walk the sorted Gaussians in parallel chunks, count per (chunk, tile), prefix-sum, fill.
//      Every tile's list comes out in (depth, index) order. Counts and offsets are int64; there is
//      no capacity limit (memory permitting).
#ifndef INSTANT4D_RASTERIZER_CPU_BINNING_H_
#define INSTANT4D_RASTERIZER_CPU_BINNING_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common.h"

namespace instant4d {
namespace cpu {

// Per-block tile lists of the binning setup (blocks of consecutive Gaussian indices).
struct SetupBlock {
  std::vector<int32_t> tiles;        // tile ids of the block's Gaussians, Gaussian after Gaussian
};

// Per-chunk counts of the fill (chunks of consecutive depth ranks).
struct FillChunk {
  std::vector<int64_t> cursor;       // [n_tiles] entries of this chunk per tile, then fill position
};


// Temporaries of BinImage, kept in a Workspace so that their memory is reused from call to call.
struct BinTemps {
  std::vector<SetupBlock> blocks;
  std::vector<int32_t> tile_count;   // [N] tiles per Gaussian (0: not binned)
  std::vector<int64_t> tile_offset;  // [N] offset of its tiles in its block's list
  std::vector<Packed> packed_by_index;
  std::vector<uint32_t> keys, keys2;
  std::vector<int32_t> sorted2;
  std::vector<FillChunk> chunks;
};

// Bins image `s` into `out`; with `want_gauss_map` also the entries of each Gaussian (the backward's
// reduction order).
void BinImage(Pool& pool, const Dims& d, const SceneView& s, bool want_gauss_map, Binning& out, BinTemps& tmp);

// Host memory held by a binning.
size_t BinningBytes(const Binning& b);

// Binnings handed from a forward call to the backward call of the same evaluation, so the backward
// need not bin again. The forward (only when JAX differentiates it) stores each image's binning under
// a fresh process-unique token that travels as an int32 residual; the backward takes it back. A miss
// (evicted, a second backward of the same forward, another process) just re-bins: the binning is a
// deterministic function of the inputs, so results are bitwise the same either way. Bounded in
// entries and bytes; the oldest entries are evicted first.
class BinningCache {
 public:
  static BinningCache& Get() {
    static BinningCache* cache = new BinningCache();  // never destroyed: safe at process exit
    return *cache;
  }
  uint32_t NewToken() {
    uint32_t t;
    do {
      t = next_.fetch_add(1, std::memory_order_relaxed);
    } while (t == 0);  // 0 means "no binning kept"
    return t;
  }
  std::unique_ptr<Binning> Acquire() {
    std::lock_guard<std::mutex> lk(mu_);
    if (spare_.empty()) return std::make_unique<Binning>();
    std::unique_ptr<Binning> b = std::move(spare_.back());
    spare_.pop_back();
    return b;
  }
  void Put(uint32_t token, int64_t image, std::unique_ptr<Binning> bin) {
    const size_t bytes = BinningBytes(*bin);
    if (bytes > kMaxBytes) return;
    std::lock_guard<std::mutex> lk(mu_);
    entries_.push_back(Entry{token, image, bytes, std::move(bin)});
    bytes_ += bytes;
    while (entries_.size() > kMaxEntries || bytes_ > kMaxBytes) {
      bytes_ -= entries_.front().bytes;
      RecycleLocked(std::move(entries_.front().bin));
      entries_.erase(entries_.begin());
    }
  }
  std::unique_ptr<Binning> Take(uint32_t token, int64_t image) {
    if (token == 0) return nullptr;
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->token == token && it->image == image) {
        std::unique_ptr<Binning> b = std::move(it->bin);
        bytes_ -= it->bytes;
        entries_.erase(it);
        return b;
      }
    }
    return nullptr;
  }
  void Recycle(std::unique_ptr<Binning> bin) {
    std::lock_guard<std::mutex> lk(mu_);
    RecycleLocked(std::move(bin));
  }

 private:
  struct Entry {
    uint32_t token;
    int64_t image;
    size_t bytes;
    std::unique_ptr<Binning> bin;
  };
  void RecycleLocked(std::unique_ptr<Binning> bin) {
    if (bin && spare_.size() < kMaxSpare && BinningBytes(*bin) <= kMaxBytes / 4) spare_.push_back(std::move(bin));
  }
  static constexpr size_t kMaxEntries = 1024;
  static constexpr size_t kMaxSpare = 4;
  static constexpr size_t kMaxBytes = size_t{512} << 20;
  std::atomic<uint32_t> next_{1};
  std::mutex mu_;
  std::vector<Entry> entries_;
  std::vector<std::unique_ptr<Binning>> spare_;
  size_t bytes_ = 0;
};

}  // namespace cpu
}  // namespace instant4d

#endif  // INSTANT4D_RASTERIZER_CPU_BINNING_H_
