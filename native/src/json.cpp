/*!
 * \file json.cpp
 * \brief A small recursive-descent JSON parser and writer helpers.
 */
#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "errors.h"

namespace dlrm {
namespace json {
namespace {

/*! \brief Nesting limit, so that hostile input cannot overflow the stack. */
constexpr int kMaxDepth = 64;

/*! \brief Parser state over one text. */
class Parser {
 public:
  /*! \brief Make a parser over \p text; \p where names it in errors. */
  Parser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  /*! \brief Parse the whole text as one value. */
  Value ParseAll() {
    Value v = ParseValue(0);
    SkipSpace();
    if (pos_ != s_.size()) Fail("trailing characters after the JSON value");
    return v;
  }

 private:
  /*! \brief Throw a bad-input error naming the file and the offset. */
  [[noreturn]] void Fail(const std::string& what) const {
    throw Error(where_ + ": invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }
  /*! \brief Skip blanks. */
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' ||
                                s_[pos_] == '\t')) {
      ++pos_;
    }
  }
  /*! \brief Consume the literal \p word or fail. */
  void Expect(const char* word) {
    for (const char* p = word; *p; ++p, ++pos_) {
      if (pos_ >= s_.size() || s_[pos_] != *p) Fail(std::string("expected '") + word + "'");
    }
  }
  /*! \brief Parse any value at the current position. */
  Value ParseValue(int depth) {
    if (depth > kMaxDepth) Fail("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) Fail("unexpected end of input");
    Value v;
    char c = s_[pos_];
    if (c == '{') return ParseObject(depth);
    if (c == '[') return ParseArray(depth);
    if (c == '"') {
      v.kind = Value::Kind::kString;
      v.string = ParseString();
    } else if (c == 't') {
      Expect("true");
      v.kind = Value::Kind::kBool;
      v.boolean = true;
    } else if (c == 'f') {
      Expect("false");
      v.kind = Value::Kind::kBool;
    } else if (c == 'n') {
      Expect("null");
    } else {
      v.kind = Value::Kind::kNumber;
      v.number = ParseNumber();
    }
    return v;
  }
  /*! \brief Parse an object. */
  Value ParseObject(int depth) {
    Value v;
    v.kind = Value::Kind::kObject;
    ++pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return v;
    }
    while (true) {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') Fail("expected a string key");
      std::string key = ParseString();
      SkipSpace();
      Expect(":");
      v.object[key] = ParseValue(depth + 1);
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      Expect("}");
      return v;
    }
  }
  /*! \brief Parse an array. */
  Value ParseArray(int depth) {
    Value v;
    v.kind = Value::Kind::kArray;
    ++pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return v;
    }
    while (true) {
      v.array.push_back(ParseValue(depth + 1));
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      Expect("]");
      return v;
    }
  }
  /*! \brief Parse a number with strtod after checking its characters. */
  double ParseNumber() {
    size_t start = pos_;
    while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) ||
                                s_[pos_] == '-' || s_[pos_] == '+' || s_[pos_] == '.' ||
                                s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
    }
    if (start == pos_) Fail("unexpected character");
    std::string tok = s_.substr(start, pos_ - start);
    char* end = nullptr;
    double d = std::strtod(tok.c_str(), &end);
    if (end != tok.c_str() + tok.size()) Fail("bad number '" + tok + "'");
    return d;
  }
  /*! \brief Append code point \p cp as UTF-8. */
  static void AppendUtf8(std::string* out, unsigned cp) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  /*! \brief Parse four hex digits of a \\u escape. */
  unsigned ParseHex4() {
    if (pos_ + 4 > s_.size()) Fail("short \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= h - '0';
      else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
      else Fail("bad \\u escape");
    }
    return cp;
  }
  /*! \brief Parse a string literal (the current character is the opening quote). */
  std::string ParseString() {
    std::string out;
    ++pos_;
    while (true) {
      if (pos_ >= s_.size()) Fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) Fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          unsigned cp = ParseHex4();
          if (cp >= 0xD800 && cp < 0xDC00 && pos_ + 6 <= s_.size() && s_[pos_] == '\\' &&
              s_[pos_ + 1] == 'u') {
            pos_ += 2;
            unsigned lo = ParseHex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          AppendUtf8(&out, cp);
          break;
        }
        default: Fail("bad escape");
      }
    }
  }

  const std::string& s_;
  std::string where_;
  size_t pos_ = 0;
};

/*! \brief Name of a kind, for error messages. */
const char* KindName(Value::Kind k) {
  switch (k) {
    case Value::Kind::kNull: return "null";
    case Value::Kind::kBool: return "a boolean";
    case Value::Kind::kNumber: return "a number";
    case Value::Kind::kString: return "a string";
    case Value::Kind::kArray: return "an array";
    default: return "an object";
  }
}

}  // namespace

bool Value::Has(const std::string& key) const {
  return kind == Kind::kObject && object.count(key) != 0;
}

const Value& Value::At(const std::string& key, const std::string& where) const {
  if (kind != Kind::kObject) throw Error(where + ": expected an object, got " + KindName(kind));
  auto it = object.find(key);
  if (it == object.end()) throw Error(where + ": missing field '" + key + "'");
  return it->second;
}

const std::string& Value::AsString(const std::string& where) const {
  if (kind != Kind::kString) throw Error(where + ": expected a string, got " + KindName(kind));
  return string;
}

int64_t Value::AsInt(const std::string& where) const {
  if (kind != Kind::kNumber || std::floor(number) != number || std::fabs(number) > 9.0e15) {
    throw Error(where + ": expected an integer, got " +
                (kind == Kind::kNumber ? Number(number) : std::string(KindName(kind))));
  }
  return static_cast<int64_t>(number);
}

const std::vector<Value>& Value::AsArray(const std::string& where) const {
  if (kind != Kind::kArray) throw Error(where + ": expected an array, got " + KindName(kind));
  return array;
}

std::vector<int64_t> Value::AsIntList(const std::string& where) const {
  std::vector<int64_t> out;
  const auto& arr = AsArray(where);
  for (size_t i = 0; i < arr.size(); ++i) {
    out.push_back(arr[i].AsInt(where + "[" + std::to_string(i) + "]"));
  }
  return out;
}

Value Parse(const std::string& text, const std::string& where) {
  return Parser(text, where).ParseAll();
}

Value ParseFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open JSON file");
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path);
}

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  return out + "\"";
}

std::string Number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

}  // namespace json
}  // namespace dlrm
