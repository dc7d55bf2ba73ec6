// Package demo is the built-in synthetic connector: deterministic tables whose
// every value is a function of the seed and the row index, so any batch can be
// regenerated and checked. It is the default first-run and benchmark source.
package demo

import (
	"context"
	_ "embed"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

//go:embed connector.yaml
var manifest []byte

// Register adds the demo connector to r.
func Register(r *connectors.Registry) {
	r.MustRegisterManifest("connectors/demo/connector.yaml", manifest, func(cfg connectors.Config) (connectors.Connector, error) {
		return New(Options{
			Rows:         cfg.Int("rows"),
			CustomerRows: cfg.Int("customer_rows"),
			BatchSize:    int(cfg.Int("batch_size")),
			Seed:         uint64(cfg.Int("seed")),
			OrderTables:  int(cfg.Int("order_tables")),
		}), nil
	})
}

// Options size the demo tables.
type Options struct {
	Rows         int64 // rows in orders
	CustomerRows int64 // rows in customers
	BatchSize    int   // rows per batch unless ReadOptions says otherwise
	Seed         uint64
	// OrderTables, above 1, adds orders_2 … orders_<n>: tables shaped and
	// sized like orders with their own values (the bench's many-table
	// source).
	OrderTables int
	Mem         memory.Allocator // nil means the default Go allocator
}

// MaxOrderTables bounds Options.OrderTables.
const MaxOrderTables = 1000

// OrderTable is the name of the k-th orders table (k from 1).
func OrderTable(k int) string {
	if k <= 1 {
		return "orders"
	}
	return "orders_" + strconv.Itoa(k)
}

// orderTableIndex is k of an orders table name, or 0.
func (c *Connector) orderTableIndex(name string) int {
	if name == "orders" {
		return 1
	}
	rest, ok := strings.CutPrefix(name, "orders_")
	if !ok {
		return 0
	}
	k, err := strconv.Atoi(rest)
	if err != nil || k < 2 || k > c.opts.OrderTables || OrderTable(k) != name {
		return 0
	}
	return k
}

// Connector generates the demo tables.
type Connector struct {
	opts Options
}

var (
	_ connectors.Discoverer = (*Connector)(nil)
	_ connectors.Reader     = (*Connector)(nil)
	_ connectors.Checker    = (*Connector)(nil)
)

// New returns a demo connector.
func New(opts Options) *Connector {
	if opts.BatchSize <= 0 {
		opts.BatchSize = connectors.DefaultBatchSize
	}
	if opts.Mem == nil {
		opts.Mem = memory.DefaultAllocator
	}
	opts.OrderTables = min(max(opts.OrderTables, 1), MaxOrderTables)
	return &Connector{opts: opts}
}

// Capabilities implements connectors.Connector.
func (c *Connector) Capabilities() connectors.Capability {
	return connectors.Discover | connectors.Read
}

// Check implements connectors.Checker: the data is generated in process,
// so there is nothing to reach and the check always passes.
func (c *Connector) Check(context.Context) error { return nil }

// PriceType is the decimal type of orders.price.
var PriceType = &arrow.Decimal128Type{Precision: 18, Scale: 2}

// OrdersSchema covers int64, int32, float64, decimal128, string, bool, date32
// and timestamp (µs, UTC), with nullable columns that hold nulls.
var OrdersSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "customer_id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "quantity", Type: arrow.PrimitiveTypes.Int32},
	{Name: "amount", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	{Name: "price", Type: PriceType},
	{Name: "status", Type: arrow.BinaryTypes.String},
	{Name: "note", Type: arrow.BinaryTypes.String, Nullable: true},
	{Name: "is_paid", Type: arrow.FixedWidthTypes.Boolean},
	{Name: "order_date", Type: arrow.FixedWidthTypes.Date32},
	{Name: "created_at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}},
}, nil)

// CustomersSchema is a smaller dimension table.
var CustomersSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "name", Type: arrow.BinaryTypes.String},
	{Name: "country", Type: arrow.BinaryTypes.String},
	{Name: "active", Type: arrow.FixedWidthTypes.Boolean},
	{Name: "score", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	{Name: "signup_date", Type: arrow.FixedWidthTypes.Date32},
	{Name: "updated_at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}, Nullable: true},
}, nil)

// Discover implements connectors.Discoverer.
func (c *Connector) Discover(ctx context.Context) ([]connectors.TableInfo, error) {
	tables := []connectors.TableInfo{
		{Name: "orders", Schema: OrdersSchema, Capabilities: connectors.Read, PrimaryKey: []string{"id"},
			Description: fmt.Sprintf("Synthetic orders (%d rows) covering the common Arrow types", c.opts.Rows)},
		{Name: "customers", Schema: CustomersSchema, Capabilities: connectors.Read, PrimaryKey: []string{"id"},
			Description: fmt.Sprintf("Synthetic customers (%d rows)", c.opts.CustomerRows)},
	}
	for k := 2; k <= c.opts.OrderTables; k++ {
		tables = append(tables, connectors.TableInfo{Name: OrderTable(k), Schema: OrdersSchema, Capabilities: connectors.Read,
			PrimaryKey: []string{"id"}, Description: fmt.Sprintf("Synthetic orders, copy %d (%d rows)", k, c.opts.Rows)})
	}
	return tables, nil
}

// Read implements connectors.Reader. Batches hold rows in id order.
func (c *Connector) Read(ctx context.Context, table string, opts connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		var total int64
		var build func(b *array.RecordBuilder, i int64)
		var schema *arrow.Schema
		switch k := c.orderTableIndex(table); {
		case k > 0:
			total, build, schema = c.opts.Rows, c.orderRow(k), OrdersSchema
		case table == "customers":
			total, build, schema = c.opts.CustomerRows, c.customerRow, CustomersSchema
		default:
			yield(nil, fmt.Errorf("%w %q in demo (the source has: orders, customers)", connectors.ErrUnknownTable, table))
			return
		}
		size := int64(opts.BatchSize)
		if size <= 0 {
			size = int64(c.opts.BatchSize)
		}
		// Incremental reads on id start at the cursor, inclusively (ids are
		// row index + 1).
		first := int64(0)
		if opts.IncrementalKey == "id" && opts.IncrementalValue != "" {
			v, err := strconv.ParseInt(opts.IncrementalValue, 10, 64)
			if err != nil {
				yield(nil, fmt.Errorf("demo: incremental value %q of id is not an integer", opts.IncrementalValue))
				return
			}
			first = min(max(v-1, 0), total)
		}
		b := array.NewRecordBuilder(c.opts.Mem, schema)
		defer b.Release()
		for start := first; start < total; start += size {
			if err := ctx.Err(); err != nil {
				yield(nil, err)
				return
			}
			end := min(start+size, total)
			b.Reserve(int(end - start))
			for i := start; i < end; i++ {
				build(b, i)
			}
			rec := b.NewRecordBatch()
			ok := yield(rec, nil)
			rec.Release()
			if !ok {
				return
			}
		}
	}
}

var (
	statuses  = []string{"new", "paid", "shipped", "delivered", "cancelled", "returned"}
	countries = []string{"CZ", "DE", "US", "GB", "FR", "PL", "SK", "AT"}
	epoch     = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
)

// mix is splitmix64: a cheap, well-distributed hash of the row index.
func mix(seed, table, i uint64) uint64 {
	z := seed*0x9E3779B97F4A7C15 + table*0xBF58476D1CE4E5B9 + i + 1
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// orderRow builds rows of the k-th orders table; orders is table 1 of the
// generator, its copies 100+k.
func (c *Connector) orderRow(k int) func(b *array.RecordBuilder, i int64) {
	tid := uint64(1)
	if k > 1 {
		tid = 100 + uint64(k)
	}
	return func(b *array.RecordBuilder, i int64) { c.orderRowOf(tid, b, i) }
}

func (c *Connector) orderRowOf(tid uint64, b *array.RecordBuilder, i int64) {
	h := mix(c.opts.Seed, tid, uint64(i))
	b.Field(0).(*array.Int64Builder).UnsafeAppend(i + 1)
	b.Field(1).(*array.Int64Builder).UnsafeAppend(int64(h%uint64(max(c.opts.CustomerRows, 1))) + 1)
	b.Field(2).(*array.Int32Builder).UnsafeAppend(int32(h>>8%20) + 1)
	if i%11 == 5 {
		b.Field(3).(*array.Float64Builder).UnsafeAppendBoolToBitmap(false)
	} else {
		b.Field(3).(*array.Float64Builder).UnsafeAppend(float64(h>>16%1_000_000) / 100)
	}
	b.Field(4).(*array.Decimal128Builder).UnsafeAppend(decimal128.FromI64(int64(h >> 20 % 10_000_000)))
	b.Field(5).(*array.StringBuilder).Append(statuses[h>>24%uint64(len(statuses))])
	if i%7 == 3 {
		b.Field(6).(*array.StringBuilder).AppendNull()
	} else {
		b.Field(6).(*array.StringBuilder).Append(fmt.Sprintf("order %d note %x", i+1, h>>40))
	}
	b.Field(7).(*array.BooleanBuilder).UnsafeAppend(h>>32&1 == 1)
	day := int32(h >> 33 % 730)
	b.Field(8).(*array.Date32Builder).UnsafeAppend(arrow.Date32FromTime(epoch) + arrow.Date32(day))
	ts := epoch.UnixMicro() + int64(day)*86_400_000_000 + int64(h>>12%86_400_000_000)
	b.Field(9).(*array.TimestampBuilder).UnsafeAppend(arrow.Timestamp(ts))
}

func (c *Connector) customerRow(b *array.RecordBuilder, i int64) {
	h := mix(c.opts.Seed, 2, uint64(i))
	b.Field(0).(*array.Int64Builder).UnsafeAppend(i + 1)
	b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("Customer %d", i+1))
	b.Field(2).(*array.StringBuilder).Append(countries[h%uint64(len(countries))])
	b.Field(3).(*array.BooleanBuilder).UnsafeAppend(h>>8&3 != 0)
	if i%13 == 0 {
		b.Field(4).(*array.Float64Builder).UnsafeAppendBoolToBitmap(false)
	} else {
		b.Field(4).(*array.Float64Builder).UnsafeAppend(float64(h>>10%10_000) / 100)
	}
	day := int32(h >> 24 % 1500)
	b.Field(5).(*array.Date32Builder).UnsafeAppend(arrow.Date32FromTime(epoch) - arrow.Date32(day))
	if i%17 == 1 {
		b.Field(6).(*array.TimestampBuilder).AppendNull()
	} else {
		b.Field(6).(*array.TimestampBuilder).UnsafeAppend(arrow.Timestamp(epoch.UnixMicro() + int64(h>>20%31_536_000_000_000)))
	}
}
