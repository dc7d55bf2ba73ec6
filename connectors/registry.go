package connectors

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Factory builds a connector from validated config.
type Factory func(cfg Config) (Connector, error)

// Registration ties a manifest to the factory that builds its connector.
type Registration struct {
	Manifest *Manifest
	New      Factory
	// ValidateEvent, for streaming connectors, checks a pushed event
	// without opening the connector (no credentials needed): the gateway
	// answers 400 with its error before the event reaches the bus.
	ValidateEvent func(event []byte) error
	// SampleEvent, for streaming connectors, is a pushed event the contract
	// suite streams when the caller gives none ("da connector test").
	SampleEvent []byte
}

// Registry maps connector names to registrations.
type Registry struct {
	byName map[string]Registration
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{byName: map[string]Registration{}} }

// Register adds a connector; a duplicate name is an error.
func (r *Registry) Register(reg Registration) error {
	if reg.Manifest == nil || reg.New == nil {
		return fmt.Errorf("register connector: manifest and factory are required")
	}
	if _, dup := r.byName[reg.Manifest.Name]; dup {
		return fmt.Errorf("register connector %s: already registered", reg.Manifest.Name)
	}
	r.byName[reg.Manifest.Name] = reg
	return nil
}

// MustRegisterManifest parses an embedded manifest and registers it with its
// factory, panicking on error; for built-in connectors whose manifest is
// compiled in.
func (r *Registry) MustRegisterManifest(path string, manifest []byte, f Factory) {
	m, err := ParseManifest(path, manifest)
	if err != nil {
		panic(err)
	}
	if err := r.Register(Registration{Manifest: m, New: f}); err != nil {
		panic(err)
	}
}

// SetSampleEvent sets the sample event of a registered connector.
func (r *Registry) SetSampleEvent(name string, event []byte) {
	reg, ok := r.byName[name]
	if !ok {
		panic("SetSampleEvent: unknown connector " + name)
	}
	reg.SampleEvent = event
	r.byName[name] = reg
}

// SetEventValidator sets the event check of a registered connector.
func (r *Registry) SetEventValidator(name string, fn func([]byte) error) {
	reg, ok := r.byName[name]
	if !ok {
		panic("SetEventValidator: unknown connector " + name)
	}
	reg.ValidateEvent = fn
	r.byName[name] = reg
}

// Names lists the registered connectors, sorted.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.byName))
	for n := range r.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Lookup returns the registration for name, or ErrUnknownConnector.
func (r *Registry) Lookup(name string) (Registration, error) {
	reg, ok := r.byName[name]
	if !ok {
		return reg, fmt.Errorf("%w %q (available: %s)", ErrUnknownConnector, name, strings.Join(r.Names(), ", "))
	}
	return reg, nil
}

// Open validates cfg against the connector's manifest and builds it. The
// connector must implement the interface of every capability it declares.
func (r *Registry) Open(name string, cfg map[string]any) (Connector, *Manifest, error) {
	reg, err := r.Lookup(name)
	if err != nil {
		return nil, nil, err
	}
	valid, err := reg.Manifest.ValidateConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	c, err := reg.New(valid)
	if err != nil {
		return nil, nil, fmt.Errorf("open connector %s: %w", name, err)
	}
	if err := CheckImplements(name, c); err != nil {
		return nil, nil, err
	}
	if extra := c.Capabilities() &^ reg.Manifest.Capabilities; extra != 0 {
		return nil, nil, fmt.Errorf("open connector %s: capabilities %s are not declared in %s", name, extra, reg.Manifest.Path)
	}
	return c, reg.Manifest, nil
}

// SelectTables returns the tables named in want, in that order, or all of
// tables when want is empty. An unknown name is ErrUnknownTable.
func SelectTables(tables []TableInfo, want []string) ([]TableInfo, error) {
	if len(want) == 0 {
		return tables, nil
	}
	var out []TableInfo
	for _, w := range want {
		i := slices.IndexFunc(tables, func(t TableInfo) bool { return t.Name == w })
		if i < 0 {
			names := make([]string, len(tables))
			for j, t := range tables {
				names[j] = t.Name
			}
			return nil, fmt.Errorf("%w %q (the source has: %s)", ErrUnknownTable, w, strings.Join(names, ", "))
		}
		out = append(out, tables[i])
	}
	return out, nil
}

// Health runs the health check of connector name, opened as c from cfg
// (see Check). The HTTP client of the manifest's request retries nothing:
// a check says how the source answers now.
func (r *Registry) Health(ctx context.Context, name string, cfg map[string]any, c Connector) error {
	reg, err := r.Lookup(name)
	if err != nil {
		return err
	}
	valid, err := reg.Manifest.ValidateConfig(cfg)
	if err != nil {
		return err
	}
	return Check(ctx, reg.Manifest, valid, c, nil)
}
