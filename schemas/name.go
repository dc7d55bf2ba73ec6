package schemas

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

var identifierRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]{0,63}$`)

// ValidateName reports whether s may be used as a source name, table name,
// attach alias or extension name. Every such name reaches SQL and file paths,
// so anything else is rejected with ErrInvalidName wrapped in a message that
// says which kind of name was wrong.
func ValidateName(kind, s string) error {
	if !identifierRE.MatchString(s) {
		return fmt.Errorf("%w: %s %s must match %s (letters, digits and _, not starting with a digit, at most 64 characters)",
			ErrInvalidName, kind, Clip(s), identifierRE.String())
	}
	return nil
}

// ClipLen is how much of an untrusted value Clip keeps.
const ClipLen = 64

// Clip quotes an untrusted value for a message or a log: whole when short,
// else its first ClipLen bytes and its length, so a forged 200 KB value
// costs 100 bytes of log, not 200 KB on every redelivery.
func Clip(s string) string {
	if len(s) <= ClipLen+16 {
		return strconv.Quote(s)
	}
	cut := ClipLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("…(%d bytes)", len(s))
}

// NameKey is the form in which two view names, or two column names of one
// table, are compared. DuckDB resolves identifiers without regard to case,
// so "events" and "Events" name one view and "id" and "ID" one column: two
// names collide when their keys are equal. Unicode case folding is applied
// (a superset of DuckDB's ASCII rule), so no pair that DuckDB would merge is
// missed.
func NameKey(s string) string { return strings.ToLower(strings.ToUpper(s)) }

// Collisions applies the name rule to names given in order of preference:
// a name whose key an earlier name already holds collides with it and is not
// kept. For every name it returns the index of the name it loses to, or -1
// when the name is kept. Exact duplicates collide too.
func Collisions(names []string) []int {
	out := make([]int, len(names))
	holder := make(map[string]int, len(names))
	for i, n := range names {
		k := NameKey(n)
		if j, taken := holder[k]; taken {
			out[i] = j
			continue
		}
		holder[k] = i
		out[i] = -1
	}
	return out
}
