package schemas

import (
	"hash/fnv"

	"github.com/apache/arrow-go/v18/arrow"
)

// RowKey hashes the values of columns cols of row i (64-bit FNV-1a over the
// values' text, NULL distinct from any value). It identifies rows by primary
// key for merges and incremental boundaries.
func RowKey(rec arrow.RecordBatch, i int, cols []int) uint64 {
	h := fnv.New64a()
	for _, c := range cols {
		col := rec.Column(c)
		if col.IsNull(i) {
			h.Write([]byte{0})
		} else {
			h.Write([]byte{1})
			h.Write([]byte(col.ValueStr(i)))
		}
		h.Write([]byte{0x1f})
	}
	return h.Sum64()
}
