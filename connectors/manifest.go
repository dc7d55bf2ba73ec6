package connectors

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/agnes-ai/connector-kit/schemas"
	"gopkg.in/yaml.v3"
)

// Manifest is a parsed and validated connector.yaml.
type Manifest struct {
	Name         string                 `yaml:"name"`
	Version      string                 `yaml:"version"`
	Description  string                 `yaml:"description"`
	Capabilities Capability             `yaml:"-"`
	Auth         Auth                   `yaml:"auth"`
	Config       map[string]ConfigField `yaml:"config"`
	HealthCheck  *HealthCheck           `yaml:"health_check,omitempty"`

	// Path is where the manifest came from, for error messages.
	Path string `yaml:"-"`

	schema *configSchema
}

// Auth says how a connector authenticates. Secrets are only ever named by
// environment variable.
type Auth struct {
	Type    string   `yaml:"type"`
	EnvVars []EnvVar `yaml:"env_vars"`
}

// EnvVar is an environment variable a connector reads.
type EnvVar struct {
	Name        string `yaml:"name"`
	Required    bool   `yaml:"required"`
	Description string `yaml:"description"`
}

// ConfigField is one key of a connector's config, a subset of JSON Schema.
type ConfigField struct {
	Type        string `yaml:"type"`
	Format      string `yaml:"format,omitempty"`
	Required    bool   `yaml:"required,omitempty"`
	Default     any    `yaml:"default,omitempty"`
	Enum        []any  `yaml:"enum,omitempty"`
	Minimum     *int64 `yaml:"minimum,omitempty"`
	Maximum     *int64 `yaml:"maximum,omitempty"`
	Description string `yaml:"description,omitempty"`
	// Secret marks a value (a password, a token) that must never be
	// printed: the runtime scrubs it from logs, events and errors.
	Secret bool `yaml:"secret,omitempty"`
}

// Secrets are the secret values of a source of this connector: the
// variables its auth names, and its config fields marked secret.
func (m *Manifest) Secrets(cfg map[string]any) []string {
	var out []string
	for _, v := range m.Auth.EnvVars {
		if s := os.Getenv(v.Name); s != "" {
			out = append(out, s)
		}
	}
	for name, f := range m.Config {
		if s, ok := cfg[name].(string); ok && f.Secret && s != "" {
			out = append(out, s)
		}
	}
	return out
}

// HealthCheck is an optional request the runtime makes before extracting.
type HealthCheck struct {
	Endpoint       string            `yaml:"endpoint"`
	Method         string            `yaml:"method"`
	Headers        map[string]string `yaml:"headers"`
	ExpectStatus   int               `yaml:"expect_status"`
	TimeoutSeconds int               `yaml:"timeout_seconds"`
}

var (
	authTypes   = []string{"none", "token", "basic", "oauth", "service_account"}
	fieldTypes  = []string{"string", "integer", "number", "boolean", "array", "object"}
	formats     = []string{"", "uri", "email", "date", "date-time", "duration", "hostname"}
	semverRE    = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$`)
	envVarRE    = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
	httpMethods = []string{"GET", "HEAD", "POST"}
)

type manifestFile struct {
	Manifest     `yaml:",inline"`
	Capabilities []string `yaml:"capabilities"`
}

// LoadManifest reads and validates the connector.yaml at path.
func LoadManifest(path string) (*Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load manifest: %w", err)
	}
	return ParseManifest(path, b)
}

// ParseManifest parses and validates manifest bytes; path names the file in
// errors. Errors wrap ErrInvalidManifest and name the file and the field.
func ParseManifest(path string, b []byte) (*Manifest, error) {
	var f manifestFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidManifest, path, err)
	}
	m := f.Manifest
	m.Path = path
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: field %s: %s", path, field, fmt.Sprintf(format, args...)))
	}
	if m.Name == "" {
		bad("name", "is required")
	} else if err := schemas.ValidateName("connector", m.Name); err != nil {
		bad("name", "%v", err)
	}
	if m.Version == "" {
		bad("version", "is required")
	} else if !semverRE.MatchString(m.Version) {
		bad("version", "%q is not a semantic version like 1.0.0", m.Version)
	}
	if strings.TrimSpace(m.Description) == "" {
		bad("description", "is required")
	}
	if len(f.Capabilities) == 0 {
		bad("capabilities", "is required: list at least one of %s", strings.Join(capabilityNames, ", "))
	}
	for i, c := range f.Capabilities {
		flag, err := ParseCapability(c)
		if err != nil {
			bad(fmt.Sprintf("capabilities[%d]", i), "%v", err)
			continue
		}
		m.Capabilities |= flag
	}
	if m.Auth.Type == "" {
		m.Auth.Type = "none"
	}
	if !slices.Contains(authTypes, m.Auth.Type) {
		bad("auth.type", "%q is not one of %s", m.Auth.Type, strings.Join(authTypes, ", "))
	}
	for i, v := range m.Auth.EnvVars {
		if !envVarRE.MatchString(v.Name) {
			bad(fmt.Sprintf("auth.env_vars[%d].name", i), "%q is not an environment variable name (A-Z, 0-9, _)", v.Name)
		}
	}
	checkConfigAndHealth(&m, bad)
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidManifest, errors.Join(errs...))
	}
	sch, err := compileConfigSchema(&m)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: field config: %v", ErrInvalidManifest, path, err)
	}
	m.schema = sch
	return &m, nil
}

// MarshalYAML prints the manifest in connector.yaml form.
func (m Manifest) MarshalYAML() (any, error) {
	return manifestFile{Manifest: m, Capabilities: m.Capabilities.Strings()}, nil
}

// checkConfigAndHealth checks the manifest's config fields and health check,
// filling the health check's defaults.
func checkConfigAndHealth(m *Manifest, bad func(field, format string, args ...any)) {
	keys := make([]string, 0, len(m.Config))
	for k := range m.Config {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fld := m.Config[k]
		if !slices.Contains(fieldTypes, fld.Type) {
			bad("config."+k+".type", "%q is not one of %s", fld.Type, strings.Join(fieldTypes, ", "))
		}
		if !slices.Contains(formats, fld.Format) {
			bad("config."+k+".format", "%q is not one of %s", fld.Format, strings.Join(formats[1:], ", "))
		}
		if fld.Required && fld.Default != nil {
			bad("config."+k, "a required field cannot have a default")
		}
	}
	if hc := m.HealthCheck; hc != nil {
		if hc.Endpoint == "" {
			bad("health_check.endpoint", "is required")
		}
		if hc.Method == "" {
			hc.Method = "GET"
		}
		if !slices.Contains(httpMethods, strings.ToUpper(hc.Method)) {
			bad("health_check.method", "%q is not one of %s", hc.Method, strings.Join(httpMethods, ", "))
		}
		if hc.ExpectStatus == 0 {
			hc.ExpectStatus = 200
		}
		if hc.TimeoutSeconds <= 0 {
			hc.TimeoutSeconds = 10
		}
	}
}
