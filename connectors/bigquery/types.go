package bigquery

import (
	"encoding/base64"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
)

// Field is one column of a BigQuery schema (nested for RECORD).
type Field struct {
	Name        string  `json:"name"`
	Type        string  `json:"type"`
	Mode        string  `json:"mode,omitempty"` // NULLABLE, REQUIRED, REPEATED
	Description string  `json:"description,omitempty"`
	Fields      []Field `json:"fields,omitempty"`
}

// Schema is a table's or a query result's schema.
type Schema struct {
	Fields []Field `json:"fields"`
}

// NUMERIC is decimal128 with BigQuery's precision and scale; BIGNUMERIC
// (76 digits) does not fit 128 bits and arrives as its decimal string.
const numericPrecision, numericScale = 38, 9

// arrowType maps a BigQuery type to Arrow; REPEATED makes it a list.
func arrowType(f Field) (arrow.DataType, error) {
	var t arrow.DataType
	switch strings.ToUpper(f.Type) {
	case "STRING", "JSON", "GEOGRAPHY", "BIGNUMERIC", "BIGDECIMAL", "INTERVAL", "RANGE":
		t = arrow.BinaryTypes.String
	case "INT64", "INTEGER":
		t = arrow.PrimitiveTypes.Int64
	case "FLOAT64", "FLOAT":
		t = arrow.PrimitiveTypes.Float64
	case "NUMERIC", "DECIMAL":
		t = &arrow.Decimal128Type{Precision: numericPrecision, Scale: numericScale}
	case "BOOL", "BOOLEAN":
		t = arrow.FixedWidthTypes.Boolean
	case "DATE":
		t = arrow.FixedWidthTypes.Date32
	case "DATETIME":
		t = &arrow.TimestampType{Unit: arrow.Microsecond}
	case "TIMESTAMP":
		t = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	case "TIME":
		t = arrow.FixedWidthTypes.Time64us
	case "BYTES":
		t = arrow.BinaryTypes.Binary
	case "RECORD", "STRUCT":
		fields := make([]arrow.Field, len(f.Fields))
		for i, c := range f.Fields {
			ct, err := arrowType(c)
			if err != nil {
				return nil, fmt.Errorf("%s.%w", f.Name, err)
			}
			fields[i] = arrow.Field{Name: c.Name, Type: ct, Nullable: true}
		}
		t = arrow.StructOf(fields...)
	default:
		return nil, fmt.Errorf("%s: BigQuery type %q has no Arrow type", f.Name, f.Type)
	}
	if strings.EqualFold(f.Mode, "REPEATED") {
		t = arrow.ListOf(t)
	}
	return t, nil
}

// arrowSchema is the Arrow schema of a BigQuery schema; every column is
// nullable (REQUIRED columns too: a materialized query may widen them).
func arrowSchema(s Schema) (*arrow.Schema, error) {
	fields := make([]arrow.Field, len(s.Fields))
	for i, f := range s.Fields {
		t, err := arrowType(f)
		if err != nil {
			return nil, err
		}
		fields[i] = arrow.Field{Name: f.Name, Type: t, Nullable: true}
	}
	return arrow.NewSchema(fields, nil), nil
}

// appendValue appends one JSON value of a query result (the "v" of an f/v
// cell: a string, null, a list of {"v": ...} for REPEATED, {"f": [...]}
// for RECORD) to b, a builder of f's Arrow type.
func appendValue(b array.Builder, f Field, v any) error {
	if v == nil {
		b.AppendNull()
		return nil
	}
	if strings.EqualFold(f.Mode, "REPEATED") {
		return appendList(b, f, v)
	}
	switch strings.ToUpper(f.Type) {
	case "RECORD", "STRUCT":
		return appendRecord(b, f, v)
	}
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("%s: value %v is %T, not a string", f.Name, v, v)
	}
	if err := appendScalar(b, f, s); err != nil {
		return fmt.Errorf("%s: %q is not a %s: %v", f.Name, s, f.Type, err)
	}
	return nil
}

// appendList appends a REPEATED value: a list of {"v": item} cells.
func appendList(b array.Builder, f Field, v any) error {
	items, ok := v.([]any)
	if !ok {
		return fmt.Errorf("%s: a REPEATED value is %T, not a list", f.Name, v)
	}
	lb := b.(*array.ListBuilder)
	lb.Append(true)
	elem := f
	elem.Mode = "NULLABLE"
	for _, it := range items {
		cell, ok := it.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: a list item is %T, not {\"v\": ...}", f.Name, it)
		}
		if err := appendValue(lb.ValueBuilder(), elem, cell["v"]); err != nil {
			return err
		}
	}
	return nil
}

// appendRecord appends a RECORD value: {"f": [{"v": field}, ...]}.
func appendRecord(b array.Builder, f Field, v any) error {
	rec, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: a RECORD value is %T, not {\"f\": [...]}", f.Name, v)
	}
	cells, _ := rec["f"].([]any)
	if len(cells) != len(f.Fields) {
		return fmt.Errorf("%s: a RECORD has %d fields, the schema %d", f.Name, len(cells), len(f.Fields))
	}
	sb := b.(*array.StructBuilder)
	sb.Append(true)
	for i, c := range cells {
		cell, _ := c.(map[string]any)
		if err := appendValue(sb.FieldBuilder(i), f.Fields[i], cell["v"]); err != nil {
			return err
		}
	}
	return nil
}

// appendScalar appends a scalar, which the REST API sends as a string.
func appendScalar(b array.Builder, f Field, s string) error {
	switch strings.ToUpper(f.Type) {
	case "INT64", "INTEGER":
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		b.(*array.Int64Builder).Append(n)
	case "FLOAT64", "FLOAT":
		x, err := parseFloat(s)
		if err != nil {
			return err
		}
		b.(*array.Float64Builder).Append(x)
	case "NUMERIC", "DECIMAL":
		d, err := decimal128.FromString(s, numericPrecision, numericScale)
		if err != nil {
			return err
		}
		b.(*array.Decimal128Builder).Append(d)
	case "BOOL", "BOOLEAN":
		x, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		b.(*array.BooleanBuilder).Append(x)
	default:
		return appendTemporal(b, f, s)
	}
	return nil
}

// appendTemporal appends dates, times and the rest (bytes, strings).
func appendTemporal(b array.Builder, f Field, s string) error {
	switch strings.ToUpper(f.Type) {
	case "DATE":
		d, err := time.Parse("2006-01-02", s)
		if err != nil {
			return err
		}
		b.(*array.Date32Builder).Append(arrow.Date32FromTime(d))
	case "DATETIME":
		t, err := time.Parse("2006-01-02T15:04:05.999999999", strings.Replace(s, " ", "T", 1))
		if err != nil {
			return err
		}
		b.(*array.TimestampBuilder).Append(arrow.Timestamp(t.UnixMicro()))
	case "TIMESTAMP":
		us, err := secondsToMicros(s)
		if err != nil {
			return err
		}
		b.(*array.TimestampBuilder).Append(arrow.Timestamp(us))
	case "TIME":
		t, err := time.Parse("15:04:05.999999999", s)
		if err != nil {
			return err
		}
		day := t.Sub(time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC))
		b.(*array.Time64Builder).Append(arrow.Time64(day.Microseconds()))
	case "BYTES":
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return err
		}
		b.(*array.BinaryBuilder).Append(raw)
	default:
		b.(*array.StringBuilder).Append(s)
	}
	return nil
}

func parseFloat(s string) (float64, error) {
	switch s {
	case "NaN":
		return math.NaN(), nil
	case "Infinity", "+Infinity":
		return math.Inf(1), nil
	case "-Infinity":
		return math.Inf(-1), nil
	}
	return strconv.ParseFloat(s, 64)
}

// secondsToMicros converts BigQuery's TIMESTAMP result value, seconds since
// the epoch as a decimal or exponent string ("1.7040672001234E9"), to
// microseconds exactly (a float64 would round the last digits).
func secondsToMicros(s string) (int64, error) {
	f, ok := new(big.Float).SetPrec(256).SetString(s)
	if !ok {
		return 0, fmt.Errorf("not a number of seconds")
	}
	f.Mul(f, big.NewFloat(1e6))
	// Round half away from zero to whole microseconds.
	if f.Sign() >= 0 {
		f.Add(f, big.NewFloat(0.5))
	} else {
		f.Sub(f, big.NewFloat(0.5))
	}
	n, _ := f.Int(nil)
	if !n.IsInt64() {
		return 0, fmt.Errorf("out of range")
	}
	return n.Int64(), nil
}
