package schemas

import (
	"fmt"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// BenchmarkEncodeBatch: one 10,000-row batch (the connectors' default) of
// ids, names and amounts to Arrow IPC, as a producer publishes it.
func BenchmarkEncodeBatch(b *testing.B) {
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "name", Type: arrow.BinaryTypes.String}, {Name: "amount", Type: arrow.PrimitiveTypes.Float64}}, nil)
	bld := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer bld.Release()
	for i := range 10_000 {
		bld.Field(0).(*array.Int64Builder).Append(int64(i))
		bld.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("customer %d of the demo source", i%997))
		bld.Field(2).(*array.Float64Builder).Append(float64(i%10_000) / 100)
	}
	rec := bld.NewRecordBatch()
	defer rec.Release()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncodeBatch(rec, 8<<20); err != nil {
			b.Fatal(err)
		}
	}
}
