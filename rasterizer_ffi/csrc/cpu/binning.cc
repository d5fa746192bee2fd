// Binning of one image: see binning.h.
#include "binning.h"

#include <algorithm>
#include <optional>

namespace instant4d {
namespace cpu {
namespace {

// Stable LSD radix sort of `idx` by `key` (8-bit digits). Input order is index order, so equal
// keys stay ordered by index.
void RadixSortByKey(std::vector<uint32_t>& key, std::vector<int32_t>& idx, std::vector<uint32_t>& key2,
                    std::vector<int32_t>& idx2) {
  const size_t n = key.size();
  key2.resize(n);
  idx2.resize(n);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((key[i] >> shift) & 0xffu) + 1];
    bool trivial = false;
    for (int d = 1; d <= 256; ++d) {
      if (count[d] == n) trivial = true;
    }
    if (trivial) continue;  // every key has the same digit: the pass is the identity
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (size_t i = 0; i < n; ++i) {
      const size_t pos = count[(key[i] >> shift) & 0xffu]++;
      key2[pos] = key[i];
      idx2[pos] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
}

}  // namespace

void BinImage(Pool& pool, const Dims& d, const SceneView& s, bool want_gauss_map, Binning& out, BinTemps& tmp) {
  const int64_t n = d.n;
  const int width = static_cast<int>(d.width), height = static_cast<int>(d.height);
  std::optional<PhaseTimer> pt;
  pt.emplace("bin setup");
  // 1. per Gaussian (index order): binning set-up, tile list, packed parameters
  constexpr int64_t kBlock = 2048;
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
  if (static_cast<int64_t>(tmp.blocks.size()) < n_blocks) tmp.blocks.resize(static_cast<size_t>(n_blocks));
  tmp.tile_count.resize(static_cast<size_t>(n));
  tmp.tile_offset.resize(static_cast<size_t>(n));
  tmp.packed_by_index.resize(static_cast<size_t>(n));
  std::vector<SetupBlock>& blocks = tmp.blocks;
  std::vector<int32_t>& tile_count = tmp.tile_count;
  std::vector<int64_t>& tile_offset = tmp.tile_offset;
  std::vector<Packed>& packed_by_index = tmp.packed_by_index;
  ParallelFor(pool, n_blocks, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      std::vector<int32_t>& tiles = blocks[blk].tiles;
      tiles.clear();
      for (int64_t i = blk * kBlock; i < std::min(n, (blk + 1) * kBlock); ++i) {
        GaussianBin<double> g;
        tile_count[i] = 0;
        tile_offset[i] = static_cast<int64_t>(tiles.size());
        if (s.radii[i] <= 0 ||
            !gaussian_bin_setup<double>(s.means[2 * i], s.means[2 * i + 1], s.conics[3 * i], s.conics[3 * i + 1],
                                        s.conics[3 * i + 2], s.opacities[i], width, height, g)) {
          continue;
        }
        for (int ty = g.ty0; ty <= g.ty1; ++ty) {
          for (int tx = g.tx0; tx <= g.tx1; ++tx) {
            if (gaussian_bin_tile<double>(g, tx, ty, width, height)) tiles.push_back(ty * d.tiles_x + tx);
          }
        }
        tile_count[i] = static_cast<int32_t>(static_cast<int64_t>(tiles.size()) - tile_offset[i]);
        Packed& p = packed_by_index[i];
        p.mx = s.means[2 * i];
        p.my = s.means[2 * i + 1];
        p.a = s.conics[3 * i];
        p.b = s.conics[3 * i + 1];
        p.c = s.conics[3 * i + 2];
        p.opacity = s.opacities[i];
        p.z = s.depths[i];
        // sigma > cut implies opacity * exp(-sigma) < ALPHA_MIN with margin: an early skip that
        // never changes a decision of gaussian_alpha (g.thr = ln(opacity / ALPHA_MIN) plus the binning
        // slack; inf for an infinite opacity)
        p.cut = static_cast<float>(g.thr);
        p.px0 = g.px0;
        p.px1 = g.px1;
        p.py0 = g.py0;
        p.py1 = g.py1;
        p.index = static_cast<int32_t>(i);
      }
    }
  });

  // 2. sort the binned Gaussians by (depth, index)
  pt.emplace("bin sort");
  std::vector<uint32_t>& keys = tmp.keys;
  keys.clear();
  out.sorted.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (tile_count[i] > 0) {
      out.sorted.push_back(static_cast<int32_t>(i));
      keys.push_back(depth_key(s.depths[i]));
    }
  }
  RadixSortByKey(keys, out.sorted, tmp.keys2, tmp.sorted2);
  const int64_t n_sorted = static_cast<int64_t>(out.sorted.size());
  out.packed.resize(static_cast<size_t>(n_sorted));
  ParallelFor(pool, n_sorted, 4096, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) out.packed[r] = packed_by_index[out.sorted[r]];
  });

  // 3. count per (chunk of consecutive ranks, tile), prefix-sum, fill: every tile's entries come out
  //    in rank order (the result does not depend on the chunking)
  pt.emplace("bin fill");
  const int64_t chunk_size = std::max<int64_t>(1024, (n_sorted + 63) / 64);
  const int64_t n_chunks = (n_sorted + chunk_size - 1) / chunk_size;
  if (static_cast<int64_t>(tmp.chunks.size()) < n_chunks) tmp.chunks.resize(static_cast<size_t>(n_chunks));
  std::vector<FillChunk>& chunks = tmp.chunks;
  auto tiles_of = [&](int64_t i) { return blocks[i / kBlock].tiles.data() + tile_offset[i]; };
  ParallelFor(pool, n_chunks, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      std::vector<int64_t>& count = chunks[ch].cursor;
      count.assign(static_cast<size_t>(d.n_tiles), 0);
      for (int64_t r = ch * chunk_size; r < std::min(n_sorted, (ch + 1) * chunk_size); ++r) {
        const int64_t i = out.sorted[r];
        const int32_t* t = tiles_of(i);
        for (int32_t j = 0; j < tile_count[i]; ++j) ++count[t[j]];
      }
    }
  });
  out.tile_start.assign(static_cast<size_t>(d.n_tiles) + 1, 0);
  int64_t total = 0;
  for (int t = 0; t < d.n_tiles; ++t) {
    out.tile_start[t] = total;
    for (int64_t ch = 0; ch < n_chunks; ++ch) {
      const int64_t c = chunks[ch].cursor[t];
      chunks[ch].cursor[t] = total;
      total += c;
    }
  }
  out.tile_start[d.n_tiles] = total;
  out.entries.resize(static_cast<size_t>(total));
  if (want_gauss_map) {
    out.gauss_start.resize(static_cast<size_t>(n_sorted) + 1);
    int64_t acc = 0;
    for (int64_t r = 0; r < n_sorted; ++r) {
      out.gauss_start[r] = acc;
      acc += tile_count[out.sorted[r]];
    }
    out.gauss_start[n_sorted] = acc;
    out.gauss_entries.resize(static_cast<size_t>(acc));
  }
  ParallelFor(pool, n_chunks, 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      std::vector<int64_t>& cursor = chunks[ch].cursor;
      for (int64_t r = ch * chunk_size; r < std::min(n_sorted, (ch + 1) * chunk_size); ++r) {
        const int64_t i = out.sorted[r];
        const int32_t* t = tiles_of(i);
        for (int32_t j = 0; j < tile_count[i]; ++j) {
          const int64_t pos = cursor[t[j]]++;
          out.entries[pos] = static_cast<int32_t>(r);
          if (want_gauss_map) out.gauss_entries[out.gauss_start[r] + j] = pos;
        }
      }
    }
  });
}

size_t BinningBytes(const Binning& b) {
  return b.tile_start.capacity() * sizeof(int64_t) + b.entries.capacity() * sizeof(int32_t) +
         b.sorted.capacity() * sizeof(int32_t) + b.packed.capacity() * sizeof(Packed) +
         b.gauss_start.capacity() * sizeof(int64_t) + b.gauss_entries.capacity() * sizeof(int64_t);
}

}  // namespace cpu
}  // namespace instant4d
