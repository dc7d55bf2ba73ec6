package keboola

import (
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
)

// Metadata keys of Keboola's column types.
const (
	keyBasetype = "KBC.datatype.basetype"
	keyType     = "KBC.datatype.type"
	keyDesc     = "KBC.description"
)

// providers is the order in which column metadata providers are trusted:
// the first one that gives a basetype wins.
var providers = []string{"user", "ai-metadata-enrichment", "keboola.snowflake-transformation", "storage"}

// columnType picks a column's Arrow type from its metadata: the basetype of
// the first provider in the cascade that has one (other providers after the
// known ones), with KBC.datatype.type telling a TIMESTAMP_TZ. No basetype
// at all is a string.
func columnType(entries []MetadataEntry) arrow.DataType {
	byProvider := map[string]map[string]string{}
	var order []string
	for _, e := range entries {
		m := byProvider[e.Provider]
		if m == nil {
			m = map[string]string{}
			byProvider[e.Provider] = m
			order = append(order, e.Provider)
		}
		m[e.Key] = e.Value
	}
	cascade := append([]string{}, providers...)
	for _, p := range order {
		known := false
		for _, k := range providers {
			known = known || k == p
		}
		if !known {
			cascade = append(cascade, p)
		}
	}
	for _, p := range cascade {
		m := byProvider[p]
		if base := m[keyBasetype]; base != "" {
			return arrowType(base, m[keyType])
		}
	}
	return arrow.BinaryTypes.String
}

// Timestamp types of the columns: naive Keboola timestamps and TIMESTAMP_TZ
// (normalised to UTC).
var (
	tsNaive = &arrow.TimestampType{Unit: arrow.Microsecond}
	tsUTC   = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
)

func arrowType(base, typ string) arrow.DataType {
	switch strings.ToUpper(strings.TrimSpace(base)) {
	case "STRING", "VARCHAR", "TEXT":
		return arrow.BinaryTypes.String
	case "INTEGER", "BIGINT", "INT":
		return arrow.PrimitiveTypes.Int64
	case "NUMERIC", "DECIMAL", "FLOAT", "DOUBLE", "REAL":
		return arrow.PrimitiveTypes.Float64
	case "BOOLEAN", "BOOL":
		return arrow.FixedWidthTypes.Boolean
	case "DATE":
		return arrow.FixedWidthTypes.Date32
	case "TIMESTAMP", "TIMESTAMP_NTZ", "DATETIME":
		t := strings.ToUpper(typ)
		if strings.Contains(t, "TIMESTAMP_TZ") || strings.Contains(t, "TIMESTAMPTZ") || strings.Contains(t, "WITH TIME ZONE") || strings.Contains(t, "TIMESTAMP_LTZ") {
			return tsUTC
		}
		return tsNaive
	case "TIMESTAMP_TZ", "TIMESTAMPTZ":
		return tsUTC
	}
	return arrow.BinaryTypes.String
}

// schemaOf is the Arrow schema of a Keboola table: its columns in order,
// every one nullable (an empty CSV value is null).
func schemaOf(t Table) *arrow.Schema {
	fields := make([]arrow.Field, len(t.Columns))
	for i, c := range t.Columns {
		fields[i] = arrow.Field{Name: c, Type: columnType(t.ColumnMetadata[c]), Nullable: true}
	}
	return arrow.NewSchema(fields, nil)
}

// description is the table's KBC.description, the user's first.
func description(t Table) string {
	best, bestRank := "", len(providers)+1
	for _, e := range t.Metadata {
		if e.Key != keyDesc || e.Value == "" {
			continue
		}
		rank := len(providers)
		for i, p := range providers {
			if p == e.Provider {
				rank = i
			}
		}
		if rank < bestRank {
			best, bestRank = e.Value, rank
		}
	}
	return best
}
