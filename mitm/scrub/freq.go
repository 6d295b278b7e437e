package scrub

import "math"

// byteCost estimates, per byte value, what one IndexByte pass anchored at
// that byte costs over a chunk of HTTP or JSON text, relative to a pass that
// finds nothing: 1 + 1000 × the byte's estimated frequency, since each hit
// costs about as much as scanning a thousand bytes. Anchors are picked by
// it; a wrong guess costs speed, never correctness.
var byteCost = func() (t [256]float64) {
	// from most to least common in English text, JSON and HTTP headers
	const common = " etaoinsrhldcu\"mfpgw,y:b.v0k12-/_{}3\n5849=67T&SACEIRNO[]xPDMLjHq\r\tBFUGzWVKYJXQZ%+;?#@*()!<>~'|\\$^`"
	for i := range t {
		p := 0.0001 // control bytes and rare punctuation
		if i >= 0x80 {
			p = 0.001 // UTF-8 text has some; binary data has every byte at 1/256
		}
		t[i] = 1 + 1000*p
	}
	for r := 0; r < len(common); r++ {
		t[common[r]] = 1 + 1000*0.12*math.Pow(0.93, float64(r))
	}
	return t
}()
