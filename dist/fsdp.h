// Sharded AdamW (ZeRO-1/2 style, the first piece of FSDP): parameters are grouped into flat units; each unit's
// f32 (f64 for f64 parameters) master weights and AdamW moments are split evenly over the ranks, so each rank keeps
// 1/N of the optimizer state. Every rank holds the full model weights between steps, unless fully_shard() (ZeRO-3)
// frees each transformer block's weights outside its run; then the next block's weights are prefetched and each
// block's gradients reduce-scattered on the communicator's stream while compute goes on (NCCL; see `overlap`).
//
// A step: reduce-scatter (average) each unit's flat gradient into this rank's shard, clip by the global L2 norm
// (an all-reduce of the shards' squared norms), update the shard with train::adamw_update, all-gather the updated
// shards into the parameters. Averaging matches single-process training on the concatenated batch when every rank's
// loss is a mean over the same number of tokens.
#pragma once
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "nn/transformer.h"
#include "train/adamw.h"

namespace nt::dist {

using NamedParams = std::vector<std::pair<std::string, Tensor>>;

// One unit per top-level submodule: "tok_emb.weight" -> tok_emb, "layers.3.attn.wq.weight" -> layers.3, "norm.weight"
// -> norm; units keep the order of first appearance.
std::vector<NamedParams> units_by_module(const NamedParams& params);

class ShardedAdamW {
 public:
  // Rank 0's parameter values are the starting point: they are broadcast and written into every rank's parameters.
  // All parameters on one device (the CPU with the threads communicator, the rank's GPU with NCCL); the shards,
  // moments and buffers live there too.
  // Every rank must pass the same units (names, shapes, dtypes); a unit's parameters share one dtype.
  ShardedAdamW(Communicator& comm, std::vector<NamedParams> units, const train::AdamWConfig& cfg = {});
  // One update from the parameters' gradients (averaged over ranks; a missing gradient counts as zero, unlike
  // train::AdamW which skips that parameter). Clips to max_norm like train::AdamW::clip_grad_norm; returns the
  // global gradient norm before clipping.
  double step(double lr, double max_norm = std::numeric_limits<double>::infinity());
  // Writes the full weights (all-gathered from the shards) into every rank's parameters.
  void gather_params();
  // ZeRO-3 for a TransformerLM built from the same parameters (units from units_by_module): each block's weights
  // exist only while the block runs (gathered before its forward and freed after, gathered again when the backward
  // reaches it; its gradients reduce-scattered into this rank's shard as soon as they are complete). The embedding
  // and the final norm stay gathered (ZeRO-2). A block's weights read outside its run are an error.
  // recompute: also activation checkpointing (lm.run_block): the forward keeps only each block's input and the
  // backward recomputes the block; less activation memory for one more forward per block.
  // With recompute, blocks with auxiliary losses (MoE) are refused: the first pass records nothing, so their loss
  // would get no gradient. Without, MoE blocks train as under ZeRO-2 (tested).
  void fully_shard(nn::TransformerLM& lm, bool recompute = false);
  // The full f32 (f64) master weights by parameter name, on the CPU: a collective (every rank must call it).
  NamedParams full_weights();
  // Sharded checkpoints (dist/sharded_checkpoint.cpp), collectives: every rank writes its slices of the masters and
  // moments to <dir>/shard-<r>-of-<N>.safetensors (rank_metadata, e.g. the step and this rank's data generator, goes
  // into its metadata), rank 0 a manifest; the new directory replaces <dir> only once complete. load() accepts a
  // checkpoint written by any number of ranks (the model must match: every mismatch is listed), restores the step
  // count and writes the weights into the parameters; it returns this rank's metadata (rank 0's, plus
  // "resharded_from", when the rank count changed).
  void save(const std::string& dir, const std::map<std::string, std::string>& rank_metadata = {});
  std::map<std::string, std::string> load(const std::string& dir);
  // Between micro-batches (as train::AdamW::accumulate): reduce-scatters the gradients so far into this rank's
  // shard (summed in f32/f64 over micro-batches) and frees them; step() adds the last micro-batch's. Scale each
  // micro-batch's loss by 1 / micro-batches for the mean.
  void accumulate();
  void zero_grad();
  int64_t steps() const { return t_; }
  // The flat f32/f64 weights of this rank's shards, one per unit (for tests and future sharded checkpoints).
  std::vector<Tensor> master_shards() const;

 private:
  struct Unit {
    NamedParams params;
    std::vector<int64_t> offsets;  // of each parameter in the flat unit
    int64_t numel = 0, shard = 0;  // real elements; elements per rank (the flat unit is padded to shard * N)
    Tensor master, m, v;           // [shard], this rank's slice
    // Runs [begin, end) of the shard with one decay setting: the decay mask, run-length coded so that each run is
    // one adamw_update call (the same fused kernel train::AdamW uses). Padding is in a no-decay run; it stays 0.
    std::vector<std::tuple<int64_t, int64_t, bool>> runs;
    Tensor flat;                   // [shard * N] gather/scatter buffer (f32/f64 units; see flat_of)
    // bf16 parameters: the updated shard rounded to bf16 (written by the AdamW kernel) and the all-gathered
    // [shard * N] bf16 weights; gathering the rounded values halves the bytes and gives the same parameters.
    Tensor lowp_shard, lowp_flat;
    bool fully_sharded = false;  // ZeRO-3: weights gathered only while the unit runs (fully_shard)
    Tensor grad_shard;           // this rank's reduce-scattered gradient so far (accumulate(), ZeRO-3's backward)
  };
  void write_params(Unit& u, const Tensor& flat);  // flat -> parameters
  Tensor flat_of(Unit& u);
  std::pair<Tensor, Work> start_gather(Unit& u);
  void gather_unit(size_t k);    // ZeRO-3: allocate the unit's parameters and fill them (from the prefetch if any)
  void prefetch_unit(size_t k);  // ZeRO-3: start gathering unit k's weights for its coming run
  void release_unit(Unit& u);    // ZeRO-3: free the unit's parameter memory
  // Reduce-scatters the unit's gradients (dropping them), in flight until finish_reductions() adds the result to
  // its grad_shard; issuing one finishes the previous, so at most one full-size gradient buffer waits on NCCL.
  void reduce_unit(size_t k);
  void finish_reductions();
  Communicator& comm_;
  std::vector<Unit> units_;
  int64_t t_ = 0;
  struct {
    int64_t unit = -1;
    Tensor full;
    Work work;
  } prefetched_;  // ZeRO-3: the next block's weights in flight
  struct {
    int64_t unit = -1;
    Tensor grad;
    Work work;
  } reducing_;

 public:
  train::AdamWConfig cfg;
  // Overlap communication with compute (ZeRO-3): prefetch the next block's weights and reduce-scatter a block's
  // gradients while the following block computes. false waits for each collective at once (to measure the gain).
  bool overlap = true;
};

// A sharded checkpoint as one process's train::save_checkpoint files in out_dir (model.safetensors with the
// parameters in their dtype, optim.safetensors with the moments and f32 masters), so train::load_checkpoint or
// PyTorch can read it. The metadata (step, data generator) is rank_for_metadata's.
void consolidate_checkpoint(const std::string& dir, const std::string& out_dir, int rank_for_metadata = 0);

}  // namespace nt::dist
