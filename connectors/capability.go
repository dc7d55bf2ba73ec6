package connectors

import (
	"fmt"
	"strings"
)

// Capability is a set of capability flags; combine with |, test with Has.
type Capability uint8

const (
	Discover Capability = 1 << iota // lists tables and their schemas
	Read                            // downloads table data in batches
	Stream                          // receives continuous changes (webhooks, CDC)
	Remote                          // provides a DuckDB extension pass-through
	Write                           // pushes data back to the source
)

var capabilityNames = []string{"discover", "read", "stream", "remote", "write"}

// Has reports whether every flag of want is in c.
func (c Capability) Has(want Capability) bool { return want != 0 && c&want == want }

// Strings returns the manifest names of the flags in c, in canonical order.
func (c Capability) Strings() []string {
	var out []string
	for i, name := range capabilityNames {
		if c&(1<<i) != 0 {
			out = append(out, name)
		}
	}
	return out
}

// String joins the flag names with "|", or returns "none".
func (c Capability) String() string {
	if c == 0 {
		return "none"
	}
	return strings.Join(c.Strings(), "|")
}

// ParseCapability parses one manifest name such as "read" (case-insensitive).
func ParseCapability(s string) (Capability, error) {
	for i, name := range capabilityNames {
		if strings.EqualFold(strings.TrimSpace(s), name) {
			return 1 << i, nil
		}
	}
	return 0, fmt.Errorf("%w %q (valid: %s)", ErrUnknownCapability, s, strings.Join(capabilityNames, ", "))
}

// ParseCapabilities parses a list of manifest names into one set.
func ParseCapabilities(names []string) (Capability, error) {
	var c Capability
	for _, n := range names {
		f, err := ParseCapability(n)
		if err != nil {
			return 0, err
		}
		c |= f
	}
	return c, nil
}

// MarshalYAML prints c as its list of names.
func (c Capability) MarshalYAML() (any, error) { return c.Strings(), nil }
