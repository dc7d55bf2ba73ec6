package schemas

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// headerRoom is the part of the payload limit kept free for message headers.
const headerRoom = 4 << 10

// Chunk is one encoded piece of a batch and its row count.
type Chunk struct {
	Data []byte
	Rows int64
}

// EncodeBatch encodes rec as self-contained Arrow IPC streams (schema, one
// record batch, end of stream), each at most maxBytes long including room
// for headers. A batch that does not fit is split by rows; a single row that
// does not fit is ErrOversized. Buffers are LZ4-compressed.
func EncodeBatch(rec arrow.RecordBatch, maxBytes int) ([]Chunk, error) {
	limit := maxBytes - headerRoom
	if limit <= 0 {
		return nil, fmt.Errorf("encode batch: payload limit %d is too small", maxBytes)
	}
	var out []Chunk
	var split func(r arrow.RecordBatch) error
	split = func(r arrow.RecordBatch) error {
		b, err := encodeOne(r)
		if err != nil {
			return err
		}
		if len(b) <= limit {
			out = append(out, Chunk{Data: b, Rows: r.NumRows()})
			return nil
		}
		n := r.NumRows()
		if n <= 1 {
			return fmt.Errorf("%w: one row encodes to %d bytes, limit is %d", ErrOversized, len(b), limit)
		}
		// Aim for pieces that fit at the first try; recurse if they do not.
		pieces := int64(len(b)/limit) + 1
		step := (n + pieces - 1) / pieces
		for off := int64(0); off < n; off += step {
			end := min(off+step, n)
			s := r.NewSlice(off, end)
			err := split(s)
			s.Release()
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := split(rec); err != nil {
		return nil, err
	}
	return out, nil
}

// encodeBuffers are scratch buffers for encodeOne: a batch is encoded into
// a warm buffer and copied out at its exact size, instead of growing a new
// buffer by doubling (each step a fresh, zeroed allocation: a sixth of the
// producer's CPU in the bench).
var encodeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func encodeOne(rec arrow.RecordBatch) ([]byte, error) {
	buf := encodeBuffers.Get().(*bytes.Buffer)
	defer encodeBuffers.Put(buf)
	buf.Reset()
	w := ipc.NewWriter(buf, ipc.WithSchema(rec.Schema()), ipc.WithLZ4())
	if err := w.Write(rec); err != nil {
		w.Close()
		return nil, fmt.Errorf("encode batch: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encode batch: %w", err)
	}
	return bytes.Clone(buf.Bytes()), nil
}

// DecodeBatch decodes one IPC stream made by EncodeBatch. The caller releases
// the returned record. Anything but exactly one record batch is ErrBadBatch.
func DecodeBatch(data []byte, mem memory.Allocator) (arrow.RecordBatch, error) {
	r, err := ipc.NewReader(bytes.NewReader(data), ipc.WithAllocator(mem))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadBatch, err)
	}
	defer r.Release()
	if !r.Next() {
		if err := r.Err(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadBatch, err)
		}
		return nil, fmt.Errorf("%w: stream holds no record batch", ErrBadBatch)
	}
	rec := r.RecordBatch()
	rec.Retain()
	if r.Next() {
		rec.Release()
		return nil, fmt.Errorf("%w: stream holds more than one record batch", ErrBadBatch)
	}
	if err := r.Err(); err != nil {
		rec.Release()
		return nil, fmt.Errorf("%w: %v", ErrBadBatch, err)
	}
	return rec, nil
}

// EncodeSchema encodes a schema as an IPC stream with no batches.
func EncodeSchema(s *arrow.Schema) ([]byte, error) {
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(s))
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encode schema: %w", err)
	}
	return buf.Bytes(), nil
}

// DecodeSchema decodes a schema made by EncodeSchema.
func DecodeSchema(b []byte) (*arrow.Schema, error) {
	r, err := ipc.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("decode schema: %w", err)
	}
	defer r.Release()
	return r.Schema(), nil
}

// Fingerprint identifies a schema's columns (names, types, nullability) in
// a short string for the HeaderSchema header.
func Fingerprint(s *arrow.Schema) string {
	var b bytes.Buffer
	for _, f := range s.Fields() {
		fmt.Fprintf(&b, "%s\x1f%s\x1f%t\x1e", f.Name, f.Type.Fingerprint(), f.Nullable)
	}
	sum := sha256.Sum256(b.Bytes())
	return hex.EncodeToString(sum[:8])
}
