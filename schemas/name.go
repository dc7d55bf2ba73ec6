package schemas

import (
	"fmt"
	"regexp"
)

var identifierRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]{0,63}$`)

// ValidateName reports whether s may be used as a source name, table name,
// attach alias or extension name. Every such name reaches SQL and file paths,
// so anything else is rejected with ErrInvalidName wrapped in a message that
// says which kind of name was wrong.
func ValidateName(kind, s string) error {
	if !identifierRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q must match %s (letters, digits and _, not starting with a digit, at most 64 characters)",
			ErrInvalidName, kind, s, identifierRE.String())
	}
	return nil
}
