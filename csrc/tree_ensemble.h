// A native evaluator for ONNX-ML tree ensembles (TreeEnsembleClassifier / TreeEnsembleRegressor), the scoring
// kernel of `fastml predict` for models that are nothing else (gradient boosting, random forests converted by
// fastml convert).
//
// Why: ONNX Runtime's tree kernel follows each row down each tree with a data-dependent branch per node, so
// about half of the comparisons are mispredicted. Here a block of rows walks a tree in lock step for the tree's
// depth, each step an arithmetic select (a leaf points at itself), so the CPU overlaps the rows' loads and
// never guesses. The results are ONNX Runtime's: the same float32 sums in the same tree order, and its
// finishing rules (base values, the binary-classifier special cases, post transforms) reproduced as its
// kernel applies them. A model whose graph or attributes fall outside what is reproduced here is refused with
// the reason (FromOnnx returns kInvalidInput), and the caller keeps ONNX Runtime for it; the Python face
// (fastml.engine.native_trees) also compares both on probe rows before it uses this one.
//
// No global state. A TreeEnsemble is read-only after FromOnnx, so any number of threads may call Predict on it
// at once; the binding releases the GIL around Predict.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "status.h"

namespace fastml {

class TreeEnsemble {
 public:
  // Compiles the model serialized in `data` (an ONNX ModelProto) when its graph is one TreeEnsembleClassifier
  // or TreeEnsembleRegressor node (domain ai.onnx.ml) reading the graph's only input and writing its outputs
  // (directly or through Identity nodes).
  // kInvalidInput names what is not supported (another operator, double thresholds, string labels, PROBIT,
  // MIN/MAX aggregation, a malformed tree...); nothing is allocated past the bytes given.
  static Status FromOnnx(const uint8_t* data, size_t size, std::unique_ptr<TreeEnsemble>* out);

  bool classifier() const { return classifier_; }
  // Columns of the score output: classes (classifier) or targets (regressor).
  int64_t n_scores() const { return n_scores_; }
  // 1 + the largest feature index any node reads: rows must have at least this many columns.
  int64_t min_features() const { return min_features_; }
  int64_t n_trees() const { return static_cast<int64_t>(roots_.size()); }
  int64_t n_nodes() const { return static_cast<int64_t>(nodes_.size()); }
  const std::string& input_name() const { return input_name_; }
  // The graph's outputs: (name, which of Predict's results it is: 0 labels, 1 scores for a classifier; 0 scores
  // for a regressor). Identity nodes between the trees and the graph's outputs are followed.
  const std::vector<std::pair<std::string, int>>& outputs() const { return outputs_; }
  // Every branch's (feature, threshold), for probing the evaluator against ONNX Runtime around its splits.
  void Splits(std::vector<int32_t>* features, std::vector<float>* thresholds) const;

  // Scores `rows` rows of float32 features laid out `row_stride` floats apart (row_stride >= min_features):
  // writes rows x n_scores() values to `scores` and, for a classifier, one label per row to `labels`.
  void Predict(const float* x, int64_t rows, int64_t row_stride, float* scores, int64_t* labels) const;

 private:
  enum class Mode : uint8_t { kLeq, kLt, kGte, kGt, kEq, kNeq };
  enum class Transform : uint8_t { kNone, kLogistic, kSoftmax, kSoftmaxZero };

  // One node of a compiled tree. A branch sends a row to `next` when its test holds and to `next + 1` when
  // not; a leaf has next == its own index and kBranch clear, so extra steps past a leaf stay there.
  struct Node {
    float threshold;
    int32_t feature;  // 0 for a leaf (read, never used: keeps the lock-step loop free of a branch)
    int32_t next;
    uint32_t flags;   // kBranch | kMissingTrue
  };
  static constexpr uint32_t kBranch = 1;
  static constexpr uint32_t kMissingTrue = 2;  // a NaN value takes the `true` way

  template <Mode M>
  void Accumulate(const float* x, int64_t rows, int64_t row_stride, float* scores) const;
  void FinishClassifier(float* scores, int64_t* label) const;
  void FinishRegressor(float* scores) const;
  void ApplyTransform(float* scores, int64_t n) const;

  bool classifier_ = false;
  Mode mode_ = Mode::kLeq;
  Transform transform_ = Transform::kNone;
  bool average_ = false;  // regressor aggregate_function AVERAGE (else SUM)
  int64_t n_scores_ = 0;
  int64_t min_features_ = 0;
  std::string input_name_;
  std::vector<std::pair<std::string, int>> outputs_;

  std::vector<Node> nodes_;         // all trees, each tree's nodes contiguous, children after parents
  std::vector<int32_t> roots_;      // per tree, in the model's tree order (the order sums are taken in)
  std::vector<int32_t> depths_;     // per tree: branch steps from the root to its deepest leaf
  std::vector<int32_t> leaf_begin_; // per node: its first weight in weight_target_/weight_value_ (leaves)
  std::vector<int32_t> leaf_count_; // per node: how many weights (0 for branches)
  std::vector<int32_t> weight_target_;
  std::vector<float> weight_value_;

  std::vector<float> base_values_;
  // Which classes (targets) any tree scores: the same for every row, as each tree's leaves all score the same
  // ones (FromOnnx checks it).
  std::vector<uint8_t> scored_;
  // Classifier: the labels, and ONNX Runtime's binary-case flags.
  std::vector<int64_t> labels_;
  bool binary_case_ = false;
  bool weights_all_positive_ = true;
};

}  // namespace fastml
