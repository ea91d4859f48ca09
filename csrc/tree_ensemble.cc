#include "tree_ensemble.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <utility>

namespace fastml {
namespace {

// ---- A bounds-checked reader of the protobuf wire format, for the few ONNX messages read here. ----
// (The onnx package's generated classes cost ~60 ms of imports per `fastml predict` run; the messages read
// here are four, and every length is checked against the bytes left before it is used.)

enum Wire : uint32_t { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  bool ok = true;

  Reader(const uint8_t* data, size_t size) : p(data), end(data + size) {}
  bool more() const { return ok && p < end; }

  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) break;
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    ok = false;
    return 0;
  }
  bool Tag(uint32_t* field, uint32_t* wire) {
    const uint64_t t = Varint();
    *field = static_cast<uint32_t>(t >> 3);
    *wire = static_cast<uint32_t>(t & 7);
    return ok;
  }
  Reader Sub() {  // a length-delimited field's bytes
    const uint64_t n = Varint();
    if (!ok || n > static_cast<uint64_t>(end - p)) {
      ok = false;
      return Reader(end, 0);
    }
    Reader r(p, static_cast<size_t>(n));
    p += n;
    return r;
  }
  std::string Bytes() {
    Reader r = Sub();
    return std::string(reinterpret_cast<const char*>(r.p), static_cast<size_t>(r.end - r.p));
  }
  uint32_t Fixed32() {
    if (end - p < 4) {
      ok = false;
      return 0;
    }
    uint32_t v;
    std::memcpy(&v, p, 4);  // little-endian on every platform fastml builds for
    p += 4;
    return v;
  }
  void Skip(uint32_t wire) {
    switch (wire) {
      case kVarint: Varint(); return;
      case kFixed64:
        if (end - p < 8) ok = false; else p += 8;
        return;
      case kLen: Sub(); return;
      case kFixed32: Fixed32(); return;
      default: ok = false;  // groups (3, 4) and unknown wire types: not ONNX
    }
  }
};

float AsFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Attribute {
  float f = 0;
  int64_t i = 0;
  std::string s;
  std::vector<float> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
  bool tensor = false;  // a TensorProto value (the *_as_tensor attributes: double precision)
};

struct NodeMessage {
  std::vector<std::string> inputs, outputs;
  std::string op_type, domain;
  std::map<std::string, Attribute> attributes;
};

bool ReadAttribute(Reader r, std::string* name, Attribute* a) {
  uint32_t field, wire;
  while (r.more() && r.Tag(&field, &wire)) {
    if (field == 1 && wire == kLen) {
      *name = r.Bytes();
    } else if (field == 2 && wire == kFixed32) {
      a->f = AsFloat(r.Fixed32());
    } else if (field == 3 && wire == kVarint) {
      a->i = static_cast<int64_t>(r.Varint());
    } else if (field == 4 && wire == kLen) {
      a->s = r.Bytes();
    } else if (field == 5 && wire == kLen) {
      a->tensor = true;
      r.Sub();
    } else if (field == 7 && wire == kFixed32) {
      a->floats.push_back(AsFloat(r.Fixed32()));
    } else if (field == 7 && wire == kLen) {  // packed
      Reader packed = r.Sub();
      if ((packed.end - packed.p) % 4 != 0) return false;
      while (packed.more()) a->floats.push_back(AsFloat(packed.Fixed32()));
    } else if (field == 8 && wire == kVarint) {
      a->ints.push_back(static_cast<int64_t>(r.Varint()));
    } else if (field == 8 && wire == kLen) {  // packed
      Reader packed = r.Sub();
      while (packed.more()) a->ints.push_back(static_cast<int64_t>(packed.Varint()));
      if (!packed.ok) return false;
    } else if (field == 9 && wire == kLen) {
      a->strings.push_back(r.Bytes());
    } else {
      r.Skip(wire);
    }
  }
  return r.ok;
}

bool ReadNode(Reader r, NodeMessage* n) {
  uint32_t field, wire;
  while (r.more() && r.Tag(&field, &wire)) {
    if (field == 1 && wire == kLen) {
      n->inputs.push_back(r.Bytes());
    } else if (field == 2 && wire == kLen) {
      n->outputs.push_back(r.Bytes());
    } else if (field == 4 && wire == kLen) {
      n->op_type = r.Bytes();
    } else if (field == 7 && wire == kLen) {
      n->domain = r.Bytes();
    } else if (field == 5 && wire == kLen) {
      std::string name;
      Attribute a;
      if (!ReadAttribute(r.Sub(), &name, &a)) return false;
      n->attributes[name] = std::move(a);
    } else {
      r.Skip(wire);
    }
  }
  return r.ok;
}

std::string ValueInfoName(Reader r) {
  uint32_t field, wire;
  std::string name;
  while (r.more() && r.Tag(&field, &wire)) {
    if (field == 1 && wire == kLen) name = r.Bytes(); else r.Skip(wire);
  }
  return name;
}

struct GraphMessage {
  std::vector<NodeMessage> nodes;
  std::vector<std::string> inputs, outputs;
  size_t initializers = 0;
};

bool ReadGraph(Reader r, GraphMessage* g) {
  uint32_t field, wire;
  while (r.more() && r.Tag(&field, &wire)) {
    if (field == 1 && wire == kLen) {
      g->nodes.emplace_back();
      if (!ReadNode(r.Sub(), &g->nodes.back())) return false;
    } else if (field == 5 && wire == kLen) {
      ++g->initializers;
      r.Sub();
    } else if (field == 11 && wire == kLen) {
      g->inputs.push_back(ValueInfoName(r.Sub()));
    } else if (field == 12 && wire == kLen) {
      g->outputs.push_back(ValueInfoName(r.Sub()));
    } else {
      r.Skip(wire);
    }
  }
  return r.ok;
}

bool ReadModel(const uint8_t* data, size_t size, GraphMessage* g) {
  Reader r(data, size);
  uint32_t field, wire;
  bool seen = false;
  while (r.more() && r.Tag(&field, &wire)) {
    if (field == 7 && wire == kLen) {
      if (seen) return false;
      seen = true;
      if (!ReadGraph(r.Sub(), g)) return false;
    } else {
      r.Skip(wire);
    }
  }
  return r.ok && seen;
}

// A name from the model as it may appear in a message: printable ASCII, anything else as '?' (the message becomes
// a Python str, and a damaged file's bytes need not be UTF-8).
std::string Shown(const std::string& name) {
  std::string out = name.substr(0, 200);
  for (char& c : out) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  return out;
}

bool IsUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += len;
  }
  return true;
}

Status Unsupported(const std::string& why) {
  return Status::Error(StatusCode::kInvalidInput, "not a tree ensemble the native kernel evaluates: " + why);
}

const std::vector<int64_t> kNoInts;
const std::vector<float> kNoFloats;

// ONNX Runtime's logistic (ml_common.h): symmetric, computed on |x|.
inline float Logistic(float v) {
  const float e = 1.0f / (1.0f + std::exp(-std::fabs(v)));
  return v < 0 ? 1.0f - e : e;
}

}  // namespace

Status TreeEnsemble::FromOnnx(const uint8_t* data, size_t size, std::unique_ptr<TreeEnsemble>* out) {
  GraphMessage g;
  if (!ReadModel(data, size, &g)) return Unsupported("the bytes are not an ONNX model this reader understands");
  // One tree-ensemble node; any other node must be an Identity (converters rename outputs with them).
  NodeMessage* tree = nullptr;
  std::map<std::string, std::string> source_of;  // an Identity's output -> its input
  for (NodeMessage& nd : g.nodes) {
    const bool ml = nd.domain == "ai.onnx.ml";
    if (ml && (nd.op_type == "TreeEnsembleClassifier" || nd.op_type == "TreeEnsembleRegressor")) {
      if (tree != nullptr) return Unsupported("the graph has two tree-ensemble nodes");
      tree = &nd;
    } else if ((nd.domain.empty() || nd.domain == "ai.onnx") && nd.op_type == "Identity" && nd.inputs.size() == 1 &&
               nd.outputs.size() == 1) {
      source_of[nd.outputs[0]] = nd.inputs[0];
    } else {
      return Unsupported("the graph has a " + Shown(nd.domain.empty() ? nd.op_type : nd.domain + "." + nd.op_type) +
                         " node");
    }
  }
  if (tree == nullptr) return Unsupported("the graph has no tree-ensemble node");
  auto resolve = [&](std::string name) {  // through Identity nodes; bounded, so a cycle ends
    for (size_t hops = 0; hops <= source_of.size(); ++hops) {
      auto it = source_of.find(name);
      if (it == source_of.end()) break;
      name = it->second;
    }
    return name;
  };
  NodeMessage& node = *tree;
  const bool classifier = node.op_type == "TreeEnsembleClassifier";
  if (g.initializers != 0 || g.inputs.size() != 1 || node.inputs.size() != 1 || resolve(node.inputs[0]) != g.inputs[0]) {
    return Unsupported("the node does not read the graph's only input");
  }
  if (!IsUtf8(g.inputs[0])) return Unsupported("the input name is not UTF-8");
  if (node.outputs.size() != (classifier ? 2u : 1u) || g.outputs.empty()) {
    return Unsupported("the node's outputs are not the graph's");
  }
  std::vector<std::pair<std::string, int>> outputs;
  for (const std::string& o : g.outputs) {
    const auto at = std::find(node.outputs.begin(), node.outputs.end(), resolve(o));
    if (at == node.outputs.end()) return Unsupported("graph output " + Shown(o) + " is not the node's");
    if (!IsUtf8(o)) return Unsupported("an output name is not UTF-8");
    outputs.emplace_back(o, static_cast<int>(at - node.outputs.begin()));
  }
  for (const auto& kv : node.attributes) {
    if (kv.second.tensor) return Unsupported("attribute " + Shown(kv.first) + " holds a tensor (double precision)");
  }
  auto ints = [&](const char* name) -> const std::vector<int64_t>& {
    auto it = node.attributes.find(name);
    return it == node.attributes.end() ? kNoInts : it->second.ints;
  };
  auto floats = [&](const char* name) -> const std::vector<float>& {
    auto it = node.attributes.find(name);
    return it == node.attributes.end() ? kNoFloats : it->second.floats;
  };
  auto text = [&](const char* name, const char* fallback) -> std::string {
    auto it = node.attributes.find(name);
    return it == node.attributes.end() ? std::string(fallback) : it->second.s;
  };

  auto e = std::make_unique<TreeEnsemble>();
  e->classifier_ = classifier;
  e->input_name_ = g.inputs[0];
  e->outputs_ = std::move(outputs);

  const std::string transform = text("post_transform", "NONE");
  if (transform == "NONE") e->transform_ = Transform::kNone;
  else if (transform == "LOGISTIC") e->transform_ = Transform::kLogistic;
  else if (transform == "SOFTMAX") e->transform_ = Transform::kSoftmax;
  else if (transform == "SOFTMAX_ZERO") e->transform_ = Transform::kSoftmaxZero;
  else return Unsupported("post_transform " + Shown(transform));

  const char* prefix = classifier ? "class_" : "target_";
  const std::vector<int64_t>& w_ids = ints(classifier ? "class_ids" : "target_ids");
  const std::vector<int64_t>& w_nodes = ints(classifier ? "class_nodeids" : "target_nodeids");
  const std::vector<int64_t>& w_trees = ints(classifier ? "class_treeids" : "target_treeids");
  const std::vector<float>& w_values = floats(classifier ? "class_weights" : "target_weights");
  if (w_nodes.size() != w_ids.size() || w_trees.size() != w_ids.size() || w_values.size() != w_ids.size()) {
    return Unsupported(std::string(prefix) + "* attributes of different lengths");
  }
  if (classifier) {
    if (node.attributes.count("classlabels_strings")) return Unsupported("string class labels");
    e->labels_ = ints("classlabels_int64s");
    if (e->labels_.size() < 2) return Unsupported("fewer than two classes");
    e->n_scores_ = static_cast<int64_t>(e->labels_.size());
  } else {
    const std::string agg = text("aggregate_function", "SUM");
    if (agg == "AVERAGE") e->average_ = true;
    else if (agg != "SUM") return Unsupported("aggregate_function " + Shown(agg));
    auto it = node.attributes.find("n_targets");
    e->n_scores_ = it == node.attributes.end() ? 1 : it->second.i;
    if (e->n_scores_ < 1 || e->n_scores_ > (1 << 20)) return Unsupported("n_targets out of range");
  }
  e->base_values_ = floats("base_values");

  const std::vector<int64_t>& tree_ids = ints("nodes_treeids");
  const std::vector<int64_t>& node_ids = ints("nodes_nodeids");
  const std::vector<int64_t>& feature_ids = ints("nodes_featureids");
  const std::vector<float>& values = floats("nodes_values");
  const std::vector<int64_t>& true_ids = ints("nodes_truenodeids");
  const std::vector<int64_t>& false_ids = ints("nodes_falsenodeids");
  const std::vector<int64_t>& missing = ints("nodes_missing_value_tracks_true");
  auto modes_it = node.attributes.find("nodes_modes");
  const size_t n = tree_ids.size();
  if (n == 0 || n > (size_t(1) << 28) || modes_it == node.attributes.end() || node_ids.size() != n ||
      feature_ids.size() != n || values.size() != n || true_ids.size() != n || false_ids.size() != n ||
      modes_it->second.strings.size() != n || (!missing.empty() && missing.size() != n)) {
    return Unsupported("nodes_* attributes missing or of different lengths");
  }
  const std::vector<std::string>& modes = modes_it->second.strings;

  // (tree id, node id) -> attribute position; trees in the order they first appear, each one contiguous.
  std::map<std::pair<int64_t, int64_t>, size_t> where;
  std::vector<std::pair<size_t, size_t>> tree_spans;  // [first, end) positions of each tree's nodes
  bool have_mode = false;
  for (size_t i = 0; i < n; ++i) {
    if (!where.emplace(std::make_pair(tree_ids[i], node_ids[i]), i).second) {
      return Unsupported("node " + std::to_string(node_ids[i]) + " of tree " + std::to_string(tree_ids[i]) +
                         " appears twice");
    }
    if (i == 0 || tree_ids[i] != tree_ids[i - 1]) {
      if (!tree_spans.empty()) tree_spans.back().second = i;
      tree_spans.emplace_back(i, n);
    }
    if (modes[i] == "LEAF") continue;
    Mode m;
    if (modes[i] == "BRANCH_LEQ") m = Mode::kLeq;
    else if (modes[i] == "BRANCH_LT") m = Mode::kLt;
    else if (modes[i] == "BRANCH_GTE") m = Mode::kGte;
    else if (modes[i] == "BRANCH_GT") m = Mode::kGt;
    else if (modes[i] == "BRANCH_EQ") m = Mode::kEq;
    else if (modes[i] == "BRANCH_NEQ") m = Mode::kNeq;
    else return Unsupported("node mode " + Shown(modes[i]));
    if (have_mode && m != e->mode_) return Unsupported("branches with different comparison modes");
    e->mode_ = m;
    have_mode = true;
    if (feature_ids[i] < 0 || feature_ids[i] >= (int64_t(1) << 30)) return Unsupported("feature id out of range");
    e->min_features_ = std::max<int64_t>(e->min_features_, feature_ids[i] + 1);
  }
  {
    std::set<int64_t> seen_trees;
    for (const auto& span : tree_spans) {
      if (!seen_trees.insert(tree_ids[span.first]).second) return Unsupported("a tree's nodes are not contiguous");
    }
  }

  // Lay each tree out breadth-first from its first-listed node: a branch's two children side by side after it,
  // so every step moves forward and a malformed tree (a cycle, a shared or unreachable node) shows as a node
  // reached twice or never.
  std::vector<int32_t> compact_of(n, -1);
  for (const auto& span : tree_spans) {
    const int64_t tree = tree_ids[span.first];
    const int32_t root = static_cast<int32_t>(e->nodes_.size());
    e->roots_.push_back(root);
    std::vector<std::pair<size_t, int32_t>> queue{{span.first, root}};  // (attribute position, compact index)
    std::vector<int32_t> depth_of{0};
    e->nodes_.push_back(Node{});
    int32_t depth = 0;
    for (size_t q = 0; q < queue.size(); ++q) {
      const size_t i = queue[q].first;
      const int32_t at = queue[q].second;
      if (compact_of[i] != -1) return Unsupported("tree " + std::to_string(tree) + " is not a tree");
      compact_of[i] = at;
      depth = std::max(depth, depth_of[q]);
      Node& nd = e->nodes_[at];
      if (modes[i] == "LEAF") {
        nd = Node{0.0f, 0, at, 0};
        continue;
      }
      const auto t = where.find({tree, true_ids[i]});
      const auto f = where.find({tree, false_ids[i]});
      if (t == where.end() || f == where.end()) {
        return Unsupported("a branch of tree " + std::to_string(tree) + " names a node it does not have");
      }
      const int32_t next = static_cast<int32_t>(e->nodes_.size());
      nd = Node{values[i], static_cast<int32_t>(feature_ids[i]), next,
                kBranch | (!missing.empty() && missing[i] ? kMissingTrue : 0u)};
      e->nodes_.push_back(Node{});
      e->nodes_.push_back(Node{});
      queue.emplace_back(t->second, next);
      queue.emplace_back(f->second, next + 1);
      depth_of.push_back(depth_of[q] + 1);
      depth_of.push_back(depth_of[q] + 1);
    }
    if (queue.size() != span.second - span.first) {
      return Unsupported("tree " + std::to_string(tree) + " has nodes its root does not reach");
    }
    e->depths_.push_back(depth);
  }

  // Leaf weights, in attribute order (the order ONNX Runtime adds them in).
  const size_t total = e->nodes_.size();
  std::vector<std::vector<std::pair<int32_t, float>>> leaf(total);
  size_t weights = 0;
  for (size_t k = 0; k < w_ids.size(); ++k) {
    const auto it = where.find({w_trees[k], w_nodes[k]});
    if (it == where.end()) return Unsupported("a weight names a node the trees do not have");
    if (modes[it->second] != "LEAF") return Unsupported("a weight is on a branch");
    if (w_ids[k] < 0 || w_ids[k] >= e->n_scores_) return Unsupported("a weight's class or target is out of range");
    leaf[compact_of[it->second]].emplace_back(static_cast<int32_t>(w_ids[k]), w_values[k]);
    ++weights;
  }
  e->leaf_begin_.assign(total, 0);
  e->leaf_count_.assign(total, 0);
  e->weight_target_.reserve(weights);
  e->weight_value_.reserve(weights);
  for (size_t i = 0; i < total; ++i) {
    e->leaf_begin_[i] = static_cast<int32_t>(e->weight_target_.size());
    e->leaf_count_[i] = static_cast<int32_t>(leaf[i].size());
    for (const auto& w : leaf[i]) {
      e->weight_target_.push_back(w.first);
      e->weight_value_.push_back(w.second);
    }
  }

  // ONNX Runtime writes a class's (target's) score only if a weight of it was added for the row, and 0 for the
  // others: which ones those are must not depend on the row, so every leaf of a tree scores the same ones.
  e->scored_.assign(static_cast<size_t>(e->n_scores_), 0);
  for (size_t t = 0; t < e->roots_.size(); ++t) {
    const size_t begin = static_cast<size_t>(e->roots_[t]);
    const size_t end = t + 1 < e->roots_.size() ? static_cast<size_t>(e->roots_[t + 1]) : total;
    bool first = true;
    std::set<int32_t> targets;
    for (size_t i = begin; i < end; ++i) {
      if (e->nodes_[i].flags & kBranch) continue;
      std::set<int32_t> here;
      for (int32_t k = 0; k < e->leaf_count_[i]; ++k) here.insert(e->weight_target_[e->leaf_begin_[i] + k]);
      if (!first && here != targets) return Unsupported("leaves of one tree score different classes or targets");
      targets = std::move(here);
      first = false;
    }
    for (int32_t c : targets) e->scored_[static_cast<size_t>(c)] = 1;
  }
  if (classifier) {
    std::set<int64_t> weight_classes;
    for (size_t k = 0; k < w_ids.size(); ++k) {
      weight_classes.insert(w_ids[k]);
      if (w_values[k] < 0) e->weights_all_positive_ = false;
    }
    e->binary_case_ = e->n_scores_ == 2 && weight_classes.size() == 1;
    const size_t bases = e->base_values_.size();
    if (e->n_scores_ > 2) {
      if (bases > static_cast<size_t>(e->n_scores_)) return Unsupported("more base_values than classes");
      if (bases == 0 && std::find(e->scored_.begin(), e->scored_.end(), 1) == e->scored_.end()) {
        return Unsupported("no class is scored");
      }
    } else {
      if (bases > 2) return Unsupported("more base_values than classes");
      // ONNX Runtime writes one probability, not two, for a one-class score without its binary rule.
      if (!e->scored_[1] && bases == 1 && !e->binary_case_) return Unsupported("a one-score non-binary model");
    }
  } else if (e->n_scores_ == 1) {
    // ONNX Runtime's one-target sum takes each leaf's first weight: every leaf has exactly one here.
    for (size_t i = 0; i < total; ++i) {
      if (!(e->nodes_[i].flags & kBranch) && e->leaf_count_[i] != 1) {
        return Unsupported("a leaf without exactly one weight in a one-target regressor");
      }
    }
  }
  *out = std::move(e);
  return Status::Ok();
}

void TreeEnsemble::Splits(std::vector<int32_t>* features, std::vector<float>* thresholds) const {
  for (const Node& nd : nodes_) {
    if (!(nd.flags & kBranch)) continue;
    features->push_back(nd.feature);
    thresholds->push_back(nd.threshold);
  }
}

template <TreeEnsemble::Mode M>
void TreeEnsemble::Accumulate(const float* x, int64_t rows, int64_t row_stride, float* scores) const {
  constexpr int64_t kBlock = 64;  // rows walking a tree together: their load chains overlap
  const Node* nodes = nodes_.data();
  const int64_t width = n_scores_;
  int32_t at[kBlock];
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t block = std::min(kBlock, rows - r0);
    const float* xb = x + r0 * row_stride;
    float* sb = scores + r0 * width;
    for (size_t t = 0; t < roots_.size(); ++t) {
      for (int64_t r = 0; r < block; ++r) at[r] = roots_[t];
      for (int32_t step = 0; step < depths_[t]; ++step) {
        for (int64_t r = 0; r < block; ++r) {
          const Node& nd = nodes[at[r]];
          const float v = xb[r * row_stride + nd.feature];
          // Integer arithmetic on the comparisons, so the compiler emits no branch on the data (a mispredicted
          // branch per step is what the row-by-row walk pays).
          uint32_t go;
          if constexpr (M == Mode::kLeq) go = v <= nd.threshold;
          else if constexpr (M == Mode::kLt) go = v < nd.threshold;
          else if constexpr (M == Mode::kGte) go = v >= nd.threshold;
          else if constexpr (M == Mode::kGt) go = v > nd.threshold;
          else if constexpr (M == Mode::kEq) go = v == nd.threshold;
          else go = v != nd.threshold;
          go |= static_cast<uint32_t>(v != v) & (nd.flags >> 1);  // NaN, where the node sends it the true way
          at[r] = nd.next + static_cast<int32_t>((go ^ 1u) & nd.flags);  // kBranch is bit 0: a leaf stays
        }
      }
      for (int64_t r = 0; r < block; ++r) {
        const int32_t leaf = at[r];
        const int32_t begin = leaf_begin_[leaf];
        const int32_t count = leaf_count_[leaf];
        float* s = sb + r * width;
        for (int32_t k = 0; k < count; ++k) s[weight_target_[begin + k]] += weight_value_[begin + k];
      }
    }
  }
}

void TreeEnsemble::ApplyTransform(float* s, int64_t n) const {
  switch (transform_) {
    case Transform::kNone: return;
    case Transform::kLogistic:
      for (int64_t k = 0; k < n; ++k) s[k] = Logistic(s[k]);
      return;
    case Transform::kSoftmax: {
      float top = -std::numeric_limits<float>::max();
      for (int64_t k = 0; k < n; ++k) top = std::max(top, s[k]);
      float sum = 0.0f;
      for (int64_t k = 0; k < n; ++k) {
        s[k] = std::exp(s[k] - top);
        sum += s[k];
      }
      for (int64_t k = 0; k < n; ++k) s[k] /= sum;
      return;
    }
    case Transform::kSoftmaxZero: {  // zeros stay (scaled) zeros: exp is taken of the non-zero scores only
      float top = -std::numeric_limits<float>::max();
      for (int64_t k = 0; k < n; ++k) top = std::max(top, s[k]);
      const float scale = std::exp(-top);
      float sum = 0.0f;
      for (int64_t k = 0; k < n; ++k) {
        if (s[k] > 0.0000001f || s[k] < -0.0000001f) {
          s[k] = std::exp(s[k] - top);
          sum += s[k];
        } else {
          s[k] *= scale;
        }
      }
      for (int64_t k = 0; k < n; ++k) s[k] /= sum;
      return;
    }
  }
}

// ONNX Runtime's TreeEnsembleClassifier finish for one row, rule for rule (its tree_ensemble_aggregator.h):
// base values, the arg-max over the scored classes, and for two classes its binary-case labels and
// probabilities.
void TreeEnsemble::FinishClassifier(float* s, int64_t* label) const {
  const size_t bases = base_values_.size();
  if (n_scores_ > 2) {
    int64_t best = -1;
    float top = 0.0f;
    for (int64_t k = 0; k < n_scores_; ++k) {
      bool scored = scored_[k];
      if (static_cast<size_t>(k) < bases) {
        s[k] = scored ? s[k] + base_values_[k] : base_values_[k];
        scored = true;
      }
      if (scored && (best == -1 || s[k] > top)) {
        best = k;
        top = s[k];
      }
      // (an unscored class's sum is 0, as ONNX Runtime writes it)
    }
    *label = labels_[best];
    ApplyTransform(s, n_scores_);
    return;
  }
  const bool scored0 = scored_[0];
  const bool scored1 = scored_[1];
  int64_t kept = 2;       // scores kept for the finish: 1 when class 1 has none
  int additional = -1;    // ONNX Runtime's write_additional_scores
  if (bases == 2) {
    if (scored1) {
      s[1] = base_values_[1] + s[0];
      s[0] = -s[1];
    } else {
      s[1] += base_values_[1];
      s[0] += base_values_[0];
    }
  } else if (bases == 1) {
    s[0] += base_values_[0];
    if (!scored1) kept = 1;
  } else {
    additional = 3;
    if (!scored1) kept = 1;
  }
  const float positive = (kept == 2 && scored1) ? s[1] : (scored0 ? s[0] : 0.0f);
  if (binary_case_) {
    const bool pos = weights_all_positive_ ? positive > 0.5f : positive > 0.0f;
    additional = weights_all_positive_ ? (pos ? 0 : 1) : (pos ? 2 : 3);
    *label = labels_[pos ? 1 : 0];
  } else {
    *label = positive > 0.0f ? 1 : 0;  // ONNX Runtime's literal positive / negative labels here
  }
  // ONNX Runtime writes a score without a weight behind it as 0.
  if (!scored0) s[0] = 0.0f;
  if (kept == 2) {
    if (!scored1) s[1] = 0.0f;  // class 1's base value alone
    ApplyTransform(s, 2);
    return;
  }
  const float v = s[0];
  switch (additional) {
    case 0:
    case 1:
      s[0] = 1.0f - v;
      s[1] = v;
      break;
    case 2:
    case 3:  // (ONNX Runtime before 1.14 wrote {v, -v} for 3 without LOGISTIC; the probe rows would show it)
      if (transform_ == Transform::kLogistic) {
        s[0] = Logistic(-v);
        s[1] = Logistic(v);
      } else {
        s[0] = -v;
        s[1] = v;
      }
      break;
    default:  // FromOnnx refuses the models that get here
      break;
  }
}

void TreeEnsemble::FinishRegressor(float* s) const {
  const float trees = static_cast<float>(roots_.size());
  if (n_scores_ == 1) {
    const float origin = base_values_.size() == 1 ? base_values_[0] : 0.0f;
    s[0] = average_ ? s[0] / trees + origin : s[0] + origin;
    return;
  }
  const bool bases = base_values_.size() == static_cast<size_t>(n_scores_);
  for (int64_t k = 0; k < n_scores_; ++k) {
    if (!scored_[k]) {  // ONNX Runtime writes 0 for a target no weight scored, base value or not
      s[k] = 0.0f;
      continue;
    }
    if (average_) s[k] /= trees;
    if (bases) s[k] += base_values_[k];
  }
  ApplyTransform(s, n_scores_);
}

void TreeEnsemble::Predict(const float* x, int64_t rows, int64_t row_stride, float* scores, int64_t* labels) const {
  std::fill(scores, scores + rows * n_scores_, 0.0f);
  switch (mode_) {
    case Mode::kLeq: Accumulate<Mode::kLeq>(x, rows, row_stride, scores); break;
    case Mode::kLt: Accumulate<Mode::kLt>(x, rows, row_stride, scores); break;
    case Mode::kGte: Accumulate<Mode::kGte>(x, rows, row_stride, scores); break;
    case Mode::kGt: Accumulate<Mode::kGt>(x, rows, row_stride, scores); break;
    case Mode::kEq: Accumulate<Mode::kEq>(x, rows, row_stride, scores); break;
    case Mode::kNeq: Accumulate<Mode::kNeq>(x, rows, row_stride, scores); break;
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (classifier_) FinishClassifier(scores + r * n_scores_, labels + r);
    else FinishRegressor(scores + r * n_scores_);
  }
}

}  // namespace fastml
