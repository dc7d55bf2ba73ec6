package parquetfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/metadata"
)

// ErrNotConcatenable marks parts that Concat cannot join byte for byte
// (different Parquet schemas, or encryption); the caller re-encodes them.
var ErrNotConcatenable = errors.New("parts cannot be joined without re-encoding")

const magic = "PAR1"

// Concat writes the row groups of srcs, in order, into one Parquet file at
// final without decoding them: each row group's column chunks are copied
// byte for byte and one new footer lists them all with their offsets moved
// to where they now are. Every source must have the same Parquet schema.
// The new file's key-value metadata is the first source's, without the
// keys in drop. Like Create and Commit, the file is written under a
// temporary name and placed (see place); it returns the file's size.
func Concat(final string, srcs []string, drop ...string) (int64, error) {
	if len(srcs) == 0 {
		return 0, fmt.Errorf("concat %s: no parts", final)
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return 0, fmt.Errorf("concat %s: %w", final, err)
	}
	tmp := TempName(final)
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, fmt.Errorf("concat %s: %w", final, err)
	}
	if err := concatInto(out, srcs, drop); err != nil {
		out.Close()
		os.Remove(tmp)
		return 0, fmt.Errorf("concat %s: %w", final, err)
	}
	return place(out, tmp, final)
}

// concatInto writes the joined file to out.
func concatInto(out *os.File, srcs []string, drop []string) error {
	if _, err := io.WriteString(out, magic); err != nil {
		return err
	}
	pos := int64(len(magic))
	var joined *metadata.FileMetaData
	for _, src := range srcs {
		md, err := footer(src)
		if err != nil {
			return err
		}
		if md.IsSetEncryptionAlgorithm() {
			return fmt.Errorf("%w: %s is encrypted", ErrNotConcatenable, src)
		}
		if joined == nil {
			// A copy with no row groups; they are added below.
			if joined, err = md.Subset(nil); err != nil {
				return err
			}
			kv := joined.FileMetaData.KeyValueMetadata[:0:0]
			for _, e := range joined.FileMetaData.KeyValueMetadata {
				if !slices.Contains(drop, e.Key) {
					kv = append(kv, e)
				}
			}
			joined.FileMetaData.KeyValueMetadata = kv
		} else if !joined.Schema.Equals(md.Schema) {
			return fmt.Errorf("%w: %s has another schema than %s", ErrNotConcatenable, src, srcs[0])
		}
		if pos, err = copyRowGroups(out, pos, src, md, joined); err != nil {
			return err
		}
	}
	n, err := joined.WriteTo(out, nil)
	if err != nil {
		return err
	}
	var tail [8]byte
	binary.LittleEndian.PutUint32(tail[:4], uint32(n))
	copy(tail[4:], magic)
	_, err = out.Write(tail[:])
	return err
}

// footer reads the footer of the Parquet file at path.
func footer(path string) (*metadata.FileMetaData, error) {
	r, err := file.OpenParquetFile(path, false)
	if err != nil {
		return nil, fmt.Errorf("read parquet footer %s: %w", path, err)
	}
	defer r.Close()
	return r.MetaData(), nil
}

// copyRowGroups appends the row groups of src (whose footer is md) to out,
// which is at pos, and their moved metadata to joined. It returns the new
// position.
func copyRowGroups(out io.Writer, pos int64, src string, md *metadata.FileMetaData, joined *metadata.FileMetaData) (int64, error) {
	f, err := os.Open(src)
	if err != nil {
		return pos, err
	}
	defer f.Close()
	for _, rg := range md.RowGroups {
		start, end := int64(-1), int64(0)
		for _, c := range rg.Columns {
			m := c.MetaData
			if m == nil || c.IsSetFilePath() {
				return pos, fmt.Errorf("%w: %s: a column chunk is stored in another file", ErrNotConcatenable, src)
			}
			s := m.DataPageOffset
			if m.DictionaryPageOffset != nil && *m.DictionaryPageOffset > 0 && *m.DictionaryPageOffset < s {
				s = *m.DictionaryPageOffset
			}
			if start < 0 || s < start {
				start = s
			}
			end = max(end, s+m.TotalCompressedSize)
		}
		if start < int64(len(magic)) || end <= start {
			return pos, fmt.Errorf("%s: row group with bad column offsets", src)
		}
		n, err := io.Copy(out, io.NewSectionReader(f, start, end-start))
		if err != nil {
			return pos, err
		}
		if n != end-start {
			return pos, fmt.Errorf("%s: row group cut short", src)
		}
		delta := pos - start
		moved := *rg
		moved.Columns = slices.Clone(rg.Columns)
		for i, c := range rg.Columns {
			cc, m := *c, *c.MetaData
			m.DataPageOffset += delta
			if m.DictionaryPageOffset != nil && *m.DictionaryPageOffset > 0 {
				v := *m.DictionaryPageOffset + delta
				m.DictionaryPageOffset = &v
			}
			if m.IndexPageOffset != nil {
				v := *m.IndexPageOffset + delta
				m.IndexPageOffset = &v
			}
			// Page indexes and bloom filters live outside the row group and
			// are not copied.
			m.BloomFilterOffset, m.BloomFilterLength = nil, nil
			cc.ColumnIndexOffset, cc.ColumnIndexLength = nil, nil
			cc.OffsetIndexOffset, cc.OffsetIndexLength = nil, nil
			cc.MetaData = &m
			if cc.FileOffset != 0 {
				cc.FileOffset += delta
			}
			moved.Columns[i] = &cc
		}
		if moved.FileOffset != nil {
			v := *moved.FileOffset + delta
			moved.FileOffset = &v
		}
		ord := int16(len(joined.RowGroups))
		moved.Ordinal = &ord
		joined.RowGroups = append(joined.RowGroups, &moved)
		joined.NumRows += moved.NumRows
		pos += n
	}
	return pos, nil
}
