#include "infer_message.h"

namespace fastml::h2 {

namespace {

// Protobuf wire types.
constexpr int kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

// Well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF): protobuf refuses a string field
// that is not, at every occurrence, so this reader checks each occurrence too (a later one may replace it).
bool Utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    uint8_t c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    size_t n;
    uint8_t lo = 0x80, hi = 0xbf;  // the second byte's range
    if (c >= 0xc2 && c <= 0xdf) {
      n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return false;
    }
    if (size_t(end - p) < n || p[1] < lo || p[1] > hi) return false;
    for (size_t i = 2; i < n; ++i) {
      if (p[i] < 0x80 || p[i] > 0xbf) return false;
    }
    p += n;
  }
  return true;
}

struct Reader {
  const uint8_t* p;
  const uint8_t* end;

  // The bytes of a length-delimited field (a nested message or a packed field).
  static Reader Over(std::string_view s) {
    const auto* b = reinterpret_cast<const uint8_t*>(s.data());
    return Reader{b, b + s.size()};
  }

  bool Varint(uint64_t* v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) return false;
      uint8_t b = *p++;
      r |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        *v = r;
        return true;
      }
    }
    return false;
  }
  // A field's key: its number (1 .. 2^29 - 1, as protobuf allows) and wire type.
  bool Key(int* field, int* wire) {
    uint64_t key;
    if (!Varint(&key) || (key >> 3) == 0 || (key >> 3) > 536870911u) return false;
    *field = static_cast<int>(key >> 3);
    *wire = static_cast<int>(key & 7);
    return true;
  }
  bool Bytes(std::string_view* s) {
    uint64_t n;
    if (!Varint(&n) || n > uint64_t(end - p)) return false;
    *s = std::string_view(reinterpret_cast<const char*>(p), n);
    p += n;
    return true;
  }
  bool Text(std::string_view* s) { return Bytes(s) && Utf8(*s); }
  bool Skip(int wire) {
    uint64_t v;
    std::string_view s;
    switch (wire) {
      case kVarint:
        return Varint(&v);
      case kFixed64:
        if (end - p < 8) return false;
        p += 8;
        return true;
      case kLengthDelimited:
        return Bytes(&s);
      case kFixed32:
        if (end - p < 4) return false;
        p += 4;
        return true;
      default:
        return false;  // groups (3, 4) are not proto3; anything else is malformed
    }
  }
};

bool ParseShape(Reader* r, int wire, std::vector<int64_t>* shape) {
  uint64_t v;
  if (wire == kVarint) {  // unpacked: one element per field
    if (!r->Varint(&v)) return false;
    shape->push_back(static_cast<int64_t>(v));
    return true;
  }
  if (wire != kLengthDelimited) return false;
  std::string_view packed;
  if (!r->Bytes(&packed)) return false;
  Reader inner = Reader::Over(packed);
  while (inner.p < inner.end) {
    if (!inner.Varint(&v)) return false;
    shape->push_back(static_cast<int64_t>(v));
  }
  return true;
}

// One InferInputTensor; false when malformed or not plain (parameters).
bool ParseInput(std::string_view bytes, PlainInput* in) {
  Reader r = Reader::Over(bytes);
  while (r.p < r.end) {
    int field, wire;
    if (!r.Key(&field, &wire)) return false;
    switch (field) {
      case 1:
        if (wire != kLengthDelimited || !r.Text(&in->name)) return false;
        break;
      case 2:
        if (wire != kLengthDelimited || !r.Text(&in->datatype)) return false;
        break;
      case 3:
        if (!ParseShape(&r, wire, &in->shape)) return false;
        break;
      case 4:  // tensor parameters (shared memory, ...)
      case 5:  // typed contents (upb checks them even when raw_input_contents carries the tensor)
        return false;
      default:
        if (!r.Skip(wire)) return false;
    }
  }
  return true;
}

// One map<string, InferParameter> entry: {1: key, 2: InferParameter}.
bool ParseParameter(std::string_view bytes, Parameter* p) {
  Reader r = Reader::Over(bytes);
  while (r.p < r.end) {
    int field, wire;
    if (!r.Key(&field, &wire)) return false;
    if (field == 1 && wire == kLengthDelimited) {
      if (!r.Text(&p->key)) return false;
    } else if (field == 2 && wire == kLengthDelimited) {
      std::string_view value;
      if (!r.Bytes(&value)) return false;
      Reader v = Reader::Over(value);
      // A value field seen again merges into the first, as protobuf merges a repeated message field: a
      // member set later wins, one left unset keeps the earlier value.
      while (v.p < v.end) {
        int vfield, vwire;
        if (!v.Key(&vfield, &vwire)) return false;
        if ((vfield == 1 || vfield == 2 || vfield == 5) && vwire == kVarint) {
          if (!v.Varint(&p->bits)) return false;
          if (vfield == 1) p->bits = p->bits != 0;
          p->kind = vfield;
        } else if (vfield == 3 && vwire == kLengthDelimited) {
          if (!v.Text(&p->text)) return false;
          p->kind = 3;
        } else if (vfield == 4 && vwire == kFixed64) {
          if (v.end - v.p < 8) return false;
          uint64_t bits = 0;
          for (int i = 7; i >= 0; --i) bits = (bits << 8) | v.p[i];
          v.p += 8;
          p->bits = bits;
          p->kind = 4;
        } else {
          return false;  // a wire type protobuf would keep as an unknown field: the general path
        }
      }
    } else {
      return false;
    }
  }
  return true;
}

// One InferRequestedOutputTensor; false when it has parameters (shared memory, classification).
bool ParseOutput(std::string_view bytes, std::string_view* name) {
  Reader r = Reader::Over(bytes);
  while (r.p < r.end) {
    int field, wire;
    if (!r.Key(&field, &wire) || field != 1 || wire != kLengthDelimited || !r.Text(name)) return false;
  }
  return true;
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

void PutBytes(std::string* out, int field, std::string_view s) {
  PutVarint(out, (uint64_t(field) << 3) | kLengthDelimited);
  PutVarint(out, s.size());
  out->append(s.data(), s.size());
}

}  // namespace

size_t DatatypeSize(std::string_view dt) {
  if (dt == "FP32" || dt == "INT32" || dt == "UINT32") return 4;
  if (dt == "INT64" || dt == "FP64" || dt == "UINT64") return 8;
  if (dt == "FP16" || dt == "INT16" || dt == "UINT16") return 2;
  if (dt == "BOOL" || dt == "INT8" || dt == "UINT8") return 1;
  return 0;
}

bool ParsePlainInferRequest(const uint8_t* msg, size_t len, PlainInferRequest* out) {
  Reader r{msg, msg + len};
  std::vector<std::string_view> raw;
  while (r.p < r.end) {
    int field, wire;
    if (!r.Key(&field, &wire)) return false;
    std::string_view s;
    switch (field) {
      case 1:
        if (wire != kLengthDelimited || !r.Text(&out->model_name)) return false;
        break;
      case 2:
        if (wire != kLengthDelimited || !r.Text(&out->model_version)) return false;
        break;
      case 3:
        if (wire != kLengthDelimited || !r.Text(&out->id)) return false;
        break;
      case 4:
        if (wire != kLengthDelimited || !r.Bytes(&s)) return false;
        out->parameters.emplace_back();
        if (!ParseParameter(s, &out->parameters.back())) return false;
        break;
      case 6:
        if (wire != kLengthDelimited || !r.Bytes(&s)) return false;
        out->outputs.emplace_back();
        if (!ParseOutput(s, &out->outputs.back())) return false;
        break;
      case 5: {
        if (wire != kLengthDelimited || !r.Bytes(&s)) return false;
        out->inputs.emplace_back();
        if (!ParseInput(s, &out->inputs.back())) return false;
        break;
      }
      case 7:
        if (wire != kLengthDelimited || !r.Bytes(&s)) return false;
        raw.push_back(s);
        break;
      default:
        if (!r.Skip(wire)) return false;
    }
  }
  if (out->inputs.empty() || raw.size() != out->inputs.size()) return false;
  for (size_t i = 0; i < raw.size(); ++i) {
    PlainInput& in = out->inputs[i];
    size_t size = DatatypeSize(in.datatype);
    if (size == 0) return false;  // BYTES, or a datatype the general path names in its error
    uint64_t count = 1;
    for (int64_t d : in.shape) {
      if (d < 0) return false;
      if (d != 0 && count > (uint64_t(1) << 62) / uint64_t(d)) return false;  // overflow: the general path refuses
      count *= uint64_t(d);
    }
    if (count * size != raw[i].size()) return false;
    in.count = static_cast<size_t>(count);
    in.offset = static_cast<size_t>(reinterpret_cast<const uint8_t*>(raw[i].data()) - msg);
  }
  return true;
}

void EncodeInferResponse(std::string_view model_name, std::string_view model_version, std::string_view id,
                         const std::vector<Parameter>& parameters, const std::vector<PlainOutput>& outputs,
                         std::string* out) {
  size_t total = model_name.size() + model_version.size() + id.size() + 32;
  for (const PlainOutput& o : outputs) total += o.name.size() + o.datatype.size() + o.size + 32 + 10 * o.shape.size();
  out->reserve(total);
  if (!model_name.empty()) PutBytes(out, 1, model_name);
  if (!model_version.empty()) PutBytes(out, 2, model_version);
  if (!id.empty()) PutBytes(out, 3, id);
  std::string value, entry;
  for (const Parameter& p : parameters) {
    value.clear();
    if (p.kind == 3) {
      PutBytes(&value, 3, p.text);
    } else if (p.kind == 4) {
      value.push_back(static_cast<char>((4u << 3) | kFixed64));
      for (int i = 0; i < 8; ++i) value.push_back(static_cast<char>((p.bits >> (8 * i)) & 0xff));
    } else if (p.kind != 0) {
      PutVarint(&value, (uint64_t(p.kind) << 3) | kVarint);
      PutVarint(&value, p.bits);
    }
    entry.clear();
    PutBytes(&entry, 1, p.key);
    PutBytes(&entry, 2, value);
    PutBytes(out, 4, entry);
  }
  std::string tensor;
  for (const PlainOutput& o : outputs) {
    tensor.clear();
    if (!o.name.empty()) PutBytes(&tensor, 1, o.name);
    if (!o.datatype.empty()) PutBytes(&tensor, 2, o.datatype);
    if (!o.shape.empty()) {
      size_t packed = 0;
      for (int64_t d : o.shape) packed += VarintSize(static_cast<uint64_t>(d));
      PutVarint(&tensor, (3u << 3) | kLengthDelimited);
      PutVarint(&tensor, packed);
      for (int64_t d : o.shape) PutVarint(&tensor, static_cast<uint64_t>(d));
    }
    PutBytes(out, 5, tensor);
  }
  for (const PlainOutput& o : outputs) PutBytes(out, 6, std::string_view(o.data, o.size));
}

}  // namespace fastml::h2
