package connectors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// Config is a connector's validated configuration with defaults applied.
// Numbers are json.Number; use the typed getters.
type Config map[string]any

// String returns the string at key, or "".
func (c Config) String(key string) string {
	s, _ := c[key].(string)
	return s
}

// Int returns the integer at key, or 0.
func (c Config) Int(key string) int64 {
	switch v := c[key].(type) {
	case json.Number:
		n, _ := v.Int64()
		return n
	case int:
		return int64(v)
	case int64:
		return v
	case float64:
		return int64(v)
	}
	return 0
}

// Float returns the number at key, or 0.
func (c Config) Float(key string) float64 {
	switch v := c[key].(type) {
	case json.Number:
		f, _ := v.Float64()
		return f
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case float64:
		return v
	}
	return 0
}

// Strings returns the list of non-empty strings at key (nil when unset);
// another element is an error naming the field.
func (c Config) Strings(key string) ([]string, error) {
	list, _ := c[key].([]any)
	var out []string
	for _, v := range list {
		s, ok := v.(string)
		if !ok || s == "" {
			return nil, fmt.Errorf("config.%s holds %v, not a non-empty string", key, v)
		}
		out = append(out, s)
	}
	return out, nil
}

// StringMap returns the object of strings at key (empty when unset);
// another value is an error naming the field.
func (c Config) StringMap(key string) (map[string]string, error) {
	m, _ := c[key].(map[string]any)
	out := make(map[string]string, len(m))
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("config.%s.%s is %v, not a string", key, k, v)
		}
		out[k] = s
	}
	return out, nil
}

// Bool returns the boolean at key, or false.
func (c Config) Bool(key string) bool {
	b, _ := c[key].(bool)
	return b
}

type configSchema struct {
	schema   *jsonschema.Schema
	defaults map[string]any
}

func compileConfigSchema(m *Manifest) (*configSchema, error) {
	props := map[string]any{}
	var required []string
	defaults := map[string]any{}
	for k, f := range m.Config {
		p := map[string]any{"type": f.Type}
		if f.Format != "" {
			p["format"] = f.Format
		}
		if len(f.Enum) > 0 {
			p["enum"] = f.Enum
		}
		if f.Minimum != nil {
			p["minimum"] = *f.Minimum
		}
		if f.Maximum != nil {
			p["maximum"] = *f.Maximum
		}
		if f.Required {
			required = append(required, k)
		}
		if f.Default != nil {
			defaults[k] = f.Default
		}
		props[k] = p
	}
	slices.Sort(required)
	doc := map[string]any{
		"$schema":              "https://json-schema.org/draft/2020-12/schema",
		"type":                 "object",
		"properties":           props,
		"additionalProperties": false,
	}
	if len(required) > 0 {
		doc["required"] = required
	}
	// Round-trip through JSON so the compiler sees JSON values, not YAML ones.
	norm, err := normalize(doc)
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	url := "mem://" + m.Name + "/config.schema.json"
	if err := c.AddResource(url, norm); err != nil {
		return nil, err
	}
	sch, err := c.Compile(url)
	if err != nil {
		return nil, err
	}
	// Defaults must satisfy the schema themselves.
	if len(defaults) > 0 {
		nd, err := normalize(defaults)
		if err != nil {
			return nil, err
		}
		for k, v := range nd.(map[string]any) {
			if err := sch.Validate(map[string]any{k: v}); err != nil && !m.Config[k].Required {
				var ve *jsonschema.ValidationError
				if errors.As(err, &ve) && hasFieldError(ve, k) {
					return nil, fmt.Errorf("default of %s: %s", k, describe(ve))
				}
			}
		}
	}
	return &configSchema{schema: sch, defaults: defaults}, nil
}

func hasFieldError(ve *jsonschema.ValidationError, key string) bool {
	if len(ve.InstanceLocation) > 0 && ve.InstanceLocation[0] == key {
		return true
	}
	for _, c := range ve.Causes {
		if hasFieldError(c, key) {
			return true
		}
	}
	return false
}

func normalize(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

// ValidateConfig checks cfg against the manifest's config schema and returns
// it with defaults applied. Errors wrap ErrInvalidConfig and name each field
// that is wrong and why.
func (m *Manifest) ValidateConfig(cfg map[string]any) (Config, error) {
	if cfg == nil {
		cfg = map[string]any{}
	}
	withDefaults := maps.Clone(m.schema.defaults)
	maps.Copy(withDefaults, cfg)
	v, err := normalize(withDefaults)
	if err != nil {
		return nil, fmt.Errorf("%w for connector %s: %v", ErrInvalidConfig, m.Name, err)
	}
	if err := m.schema.schema.Validate(v); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w for connector %s: %s", ErrInvalidConfig, m.Name, describe(ve))
		}
		return nil, fmt.Errorf("%w for connector %s: %v", ErrInvalidConfig, m.Name, err)
	}
	return Config(v.(map[string]any)), nil
}

var printer = message.NewPrinter(language.English)

// describe flattens a validation error tree into "field x: reason" clauses.
func describe(ve *jsonschema.ValidationError) string {
	var parts []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			field := strings.Join(e.InstanceLocation, ".")
			msg := e.ErrorKind.LocalizedString(printer)
			if field == "" {
				parts = append(parts, msg)
			} else {
				parts = append(parts, "field "+strconv.Quote(field)+": "+msg)
			}
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	slices.Sort(parts)
	return strings.Join(slices.Compact(parts), "; ")
}
