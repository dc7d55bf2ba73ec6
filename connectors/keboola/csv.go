package keboola

import (
	"bufio"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// maybeGunzip returns r decompressed when it starts with the gzip magic
// bytes or name ends in .gz (Content-Encoding is not trusted: file hosts
// set it inconsistently).
func maybeGunzip(r io.Reader, name string) (io.Reader, func() error, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	if (len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b) || (strings.HasSuffix(strings.ToLower(name), ".gz") && len(magic) == 2) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gunzip %s: %w", name, err)
		}
		return zr, zr.Close, nil
	}
	return br, func() error { return nil }, nil
}

// DecodeCSV streams an exported file (gzipped or not, told by its magic
// bytes) of RFC 4180 CSV into Arrow batches of batchSize rows of schema,
// passing each to emit (which releases it; false stops). An empty value is
// null; a header row, when present, must name the schema's columns. It
// returns the rows read.
func DecodeCSV(r io.Reader, schema *arrow.Schema, header bool, batchSize int, mem memory.Allocator, emit func(arrow.RecordBatch) bool) (int64, error) {
	zr, closeZ, err := maybeGunzip(r, "")
	if err != nil {
		return 0, err
	}
	defer closeZ()
	return csvBatches(zr, schema, header, batchSize, mem, emit)
}

// csvBatches streams RFC 4180 CSV rows into Arrow batches of batchSize rows
// with the given schema. An empty value is null in every column; NULL,
// quotes, newlines and padding stay as they are. When header is set the
// first record names the columns and must hold exactly the schema's. emit
// takes each batch (and releases it); a false return stops the read.
func csvBatches(r io.Reader, schema *arrow.Schema, header bool, batchSize int, mem memory.Allocator, emit func(arrow.RecordBatch) bool) (rows int64, err error) {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	cr.FieldsPerRecord = schema.NumFields()
	cols := schema.NumFields()
	order := make([]int, cols) // record field i goes to column order[i]
	for i := range order {
		order[i] = i
	}
	if header {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return 0, nil
		}
		if err != nil {
			return 0, fmt.Errorf("read CSV header: %w", err)
		}
		for i, name := range rec {
			idx := schema.FieldIndices(name)
			if len(idx) != 1 {
				return 0, fmt.Errorf("CSV header column %q is not a column of the table", name)
			}
			order[i] = idx[0]
		}
	}
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	appenders := make([]func(string) error, cols)
	for i, f := range schema.Fields() {
		appenders[i] = appender(b.Field(i), f.Type)
	}
	n := 0
	flush := func() bool {
		if n == 0 {
			return true
		}
		rec := b.NewRecordBatch()
		n = 0
		return emit(rec)
	}
	line := 0
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		line++
		if err != nil {
			return rows, fmt.Errorf("read CSV: %w", err)
		}
		for i, v := range rec {
			c := order[i]
			if v == "" {
				b.Field(c).AppendNull()
				continue
			}
			if err := appenders[c](v); err != nil {
				return rows, fmt.Errorf("CSV record %d, column %s: %w", line, schema.Field(c).Name, err)
			}
		}
		n++
		rows++
		if n >= batchSize && !flush() {
			return rows, nil
		}
	}
	flush()
	return rows, nil
}

// appender parses a CSV value into the builder of a column of type t.
func appender(b array.Builder, t arrow.DataType) func(string) error {
	switch t.ID() {
	case arrow.INT64:
		ib := b.(*array.Int64Builder)
		return func(v string) error {
			x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				// Keboola writes integers of NUMERIC columns as 12.0 at times.
				f, ferr := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if ferr != nil || f != float64(int64(f)) {
					return fmt.Errorf("%q is not an integer", v)
				}
				x = int64(f)
			}
			ib.Append(x)
			return nil
		}
	case arrow.FLOAT64:
		fb := b.(*array.Float64Builder)
		return func(v string) error {
			x, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return fmt.Errorf("%q is not a number", v)
			}
			fb.Append(x)
			return nil
		}
	case arrow.BOOL:
		bb := b.(*array.BooleanBuilder)
		return func(v string) error {
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "1", "true", "t", "yes", "y":
				bb.Append(true)
			case "0", "false", "f", "no", "n":
				bb.Append(false)
			default:
				return fmt.Errorf("%q is not a boolean", v)
			}
			return nil
		}
	case arrow.DATE32:
		db := b.(*array.Date32Builder)
		return func(v string) error {
			d, err := time.Parse("2006-01-02", strings.TrimSpace(v)[:min(10, len(strings.TrimSpace(v)))])
			if err != nil {
				return fmt.Errorf("%q is not a date (YYYY-MM-DD)", v)
			}
			db.Append(arrow.Date32FromTime(d))
			return nil
		}
	case arrow.TIMESTAMP:
		tb := b.(*array.TimestampBuilder)
		return func(v string) error {
			ts, err := ParseTimestamp(v)
			if err != nil {
				return err
			}
			tb.Append(arrow.Timestamp(ts.UnixMicro()))
			return nil
		}
	default:
		sb := b.(*array.StringBuilder)
		return func(v string) error { sb.Append(v); return nil }
	}
}

// ParseTimestamp reads a Keboola timestamp: date and time separated by a
// space or T, 0 to 9 fractional digits, an optional zone (Z, ±hh, ±hhmm,
// ±hh:mm). A time with a zone is converted to UTC; one without is taken as
// it is (naive, read as UTC).
func ParseTimestamp(v string) (time.Time, error) {
	s := strings.TrimSpace(v)
	if len(s) < 19 || (s[10] != ' ' && s[10] != 'T') {
		return time.Time{}, fmt.Errorf("%q is not a timestamp (YYYY-MM-DD hh:mm:ss[.ffffff][zone])", v)
	}
	base, rest := s[:19], s[19:]
	t, err := time.Parse("2006-01-02T15:04:05", base[:10]+"T"+base[11:])
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a timestamp: %v", v, err)
	}
	if strings.HasPrefix(rest, ".") {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		frac := rest[1:i]
		if len(frac) > 9 {
			return time.Time{}, fmt.Errorf("%q has more than 9 fractional digits", v)
		}
		ns, _ := strconv.Atoi((frac + "000000000")[:9])
		t = t.Add(time.Duration(ns))
		rest = rest[i:]
	}
	rest = strings.TrimSpace(rest)
	switch {
	case rest == "":
		return t, nil
	case rest == "Z" || rest == "z" || strings.EqualFold(rest, "UTC"):
		return t, nil
	case rest[0] == '+' || rest[0] == '-':
		sign := 1
		if rest[0] == '-' {
			sign = -1
		}
		digits := strings.ReplaceAll(rest[1:], ":", "")
		var h, m int
		switch len(digits) {
		case 2:
			h, err = strconv.Atoi(digits)
		case 4:
			h, err = strconv.Atoi(digits[:2])
			if err == nil {
				m, err = strconv.Atoi(digits[2:])
			}
		default:
			err = errors.New("bad zone")
		}
		if err != nil || h > 23 || m > 59 {
			return time.Time{}, fmt.Errorf("%q has a bad zone offset %q", v, rest)
		}
		off := time.Duration(sign) * (time.Duration(h)*time.Hour + time.Duration(m)*time.Minute)
		return t.Add(-off), nil
	}
	return time.Time{}, fmt.Errorf("%q has a bad zone %q", v, rest)
}
