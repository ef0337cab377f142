package config

import (
	"fmt"
	"strconv"
	"strings"
)

// sizeUnits are the suffixes parseSize takes, binary as their names say.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}

// parseSize parses a byte size such as "64MiB", "512KiB" or "1048576": a
// positive whole number with an optional KiB, MiB, GiB or B suffix.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(t, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q is not a size: want a positive whole number with KiB, MiB or GiB, e.g. 64MiB", s)
		}
		if n > (1<<62)/u.mult {
			return 0, fmt.Errorf("%q is too large", s)
		}
		return n * u.mult, nil
	}
	return 0, fmt.Errorf("%q is not a size", s) // unreachable: "" matches every string
}
