package inject

import (
	"bytes"
	"slices"
)

// replaceJSON swaps ph in the string values of a JSON document for escaped
// (already JSON-escaped), anywhere, or with fields set only in string values
// directly under an object member of one of those names. Object keys are
// never touched. A document that does not scan as JSON is returned
// unchanged.
func replaceJSON(doc []byte, ph string, escaped []byte, fields []string) ([]byte, int) {
	if !bytes.Contains(doc, []byte(ph)) && bytes.IndexByte(doc, '\\') < 0 {
		return doc, 0 // cannot occur, not even escaped
	}
	type frame struct {
		object    bool
		expectKey bool
		key       string
	}
	var (
		stack []frame
		out   []byte
		last  int // doc bytes before last are in out
		n     int
	)
	for i := 0; i < len(doc); {
		c := doc[i]
		switch c {
		case ' ', '\t', '\n', '\r':
			i++
		case '{', '[':
			stack = append(stack, frame{object: c == '{', expectKey: c == '{'})
			i++
		case '}', ']':
			if len(stack) == 0 || stack[len(stack)-1].object != (c == '}') {
				return doc, 0
			}
			stack = stack[:len(stack)-1]
			i++
		case ':':
			if len(stack) == 0 || !stack[len(stack)-1].object {
				return doc, 0
			}
			stack[len(stack)-1].expectKey = false
			i++
		case ',':
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].expectKey = true
			}
			i++
		case '"':
			end := stringEnd(doc, i+1)
			if end < 0 {
				return doc, 0
			}
			inner := doc[i+1 : end]
			top := (*frame)(nil)
			if len(stack) > 0 {
				top = &stack[len(stack)-1]
			}
			switch {
			case top != nil && top.object && top.expectKey:
				if len(fields) > 0 {
					if bytes.IndexByte(inner, '\\') < 0 {
						top.key = string(inner)
					} else if d, ok := decodeJSONString(inner); ok {
						top.key = string(d.text)
					} else {
						return doc, 0
					}
				}
			case len(fields) == 0 || top != nil && top.object && slices.Contains(fields, top.key):
				rep, k := replaceJSONString(inner, ph, escaped)
				if k < 0 {
					return doc, 0
				}
				if k > 0 {
					out = append(out, doc[last:i+1]...)
					out = append(out, rep...)
					last = end
					n += k
				}
			}
			i = end + 1
		default:
			// a number or a literal: skip to the next delimiter
			j := i
			for j < len(doc) && bytes.IndexByte([]byte(" \t\n\r,:]}\"{["), doc[j]) < 0 {
				j++
			}
			i = j
		}
	}
	if len(stack) != 0 {
		return doc, 0
	}
	if n == 0 {
		return doc, 0
	}
	return append(out, doc[last:]...), n
}

// stringEnd returns the index of the quote closing a JSON string whose
// inside starts at i, or -1.
func stringEnd(doc []byte, i int) int {
	for i < len(doc) {
		j := bytes.IndexAny(doc[i:], "\"\\")
		if j < 0 {
			return -1
		}
		i += j
		if doc[i] == '"' {
			return i
		}
		i += 2 // skip the escaped byte
	}
	return -1
}

// replaceJSONString swaps ph in the decoded inside of a JSON string; -1 for
// an invalid escape.
func replaceJSONString(inner []byte, ph string, escaped []byte) ([]byte, int) {
	if bytes.IndexByte(inner, '\\') < 0 {
		return replacePlain(inner, ph, escaped)
	}
	d, ok := decodeJSONString(inner)
	if !ok {
		return nil, -1
	}
	return d.replace(inner, ph, escaped)
}
