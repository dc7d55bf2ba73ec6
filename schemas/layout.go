package schemas

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/google/uuid"
)

// Names of the files and folders of a source's extract folder.
const (
	ExtractFile = "extract.duckdb"
	// DataFolder holds what the views read: data/<table>.parquet (a link to
	// the newest version) and data/<table>/month=YYYY-MM/*.parquet.
	DataFolder = "data"
	// VersionFolder, inside DataFolder, holds every published version of a
	// batch table as its own immutable file: data/.versions/<table>/<run>.parquet.
	VersionFolder = ".versions"
	StagingFolder = ".staging"
	// RejectedFolder keeps streamed parts that could not be published.
	RejectedFolder = ".rejected"
)

// MaxAttempt bounds the attempt number a header or event may carry.
const MaxAttempt = 1000

// ValidateRunID accepts a run id: a UUID in its canonical lowercase form, or
// StreamRun. Run ids become folder names, so nothing else is accepted.
func ValidateRunID(s string) error {
	if s == StreamRun {
		return nil
	}
	u, err := uuid.Parse(s)
	if err != nil || u.String() != s {
		return fmt.Errorf("%w: run id %s is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, lowercase)", ErrInvalidName, Clip(s))
	}
	return nil
}

// ValidateAttempt checks an attempt number read from a header or an event.
func ValidateAttempt(n int) error {
	if n < 1 || n > MaxAttempt {
		return fmt.Errorf("attempt %d is outside 1..%d", n, MaxAttempt)
	}
	return nil
}

// PartName is the file name of a part a writer stages: which attempt wrote
// it, its first and last data message, a hash of its contents' seqs and, for
// partitioned tables, the month of its rows. The same batches always give
// the same name, so a retried write overwrites instead of duplicating.
type PartName struct {
	Month       string // YYYY-MM, or "" for batch tables
	Attempt     int
	First, Last int64
	Hash        string // 12 lowercase hex digits
}

var partNameRE = regexp.MustCompile(`^(?:m([0-9]{4}-(?:0[1-9]|1[0-2]))-)?a([1-9][0-9]{0,3})-s([0-9]{10,19})-([0-9]{10,19})-([0-9a-f]{12})\.part$`)

// String is the part's file name.
func (p PartName) String() string {
	s := fmt.Sprintf("a%d-s%010d-%010d-%s.part", p.Attempt, p.First, p.Last, p.Hash)
	if p.Month != "" {
		s = "m" + p.Month + "-" + s
	}
	return s
}

// Stem is the name without the .part suffix.
func (p PartName) Stem() string { return strings.TrimSuffix(p.String(), ".part") }

// ParsePartName parses a part file name; anything that String could not have
// produced is an error.
func ParsePartName(s string) (PartName, error) {
	m := partNameRE.FindStringSubmatch(s)
	if m == nil {
		return PartName{}, fmt.Errorf("%w: part name %q is not [mYYYY-MM-]a<attempt>-s<first>-<last>-<hash>.part", ErrInvalidName, s)
	}
	p := PartName{Month: m[1], Hash: m[5]}
	var err error
	if p.Attempt, err = strconv.Atoi(m[2]); err != nil || ValidateAttempt(p.Attempt) != nil {
		return PartName{}, fmt.Errorf("%w: part name %q: bad attempt", ErrInvalidName, s)
	}
	if p.First, err = strconv.ParseInt(m[3], 10, 64); err != nil {
		return PartName{}, fmt.Errorf("%w: part name %q: bad first seq", ErrInvalidName, s)
	}
	if p.Last, err = strconv.ParseInt(m[4], 10, 64); err != nil || p.Last < p.First {
		return PartName{}, fmt.Errorf("%w: part name %q: bad last seq", ErrInvalidName, s)
	}
	return p, nil
}

// Layout builds every path under a data directory. Each method validates the
// names it joins and refuses a result outside the source's folder, so a
// value read from the bus can never name a file elsewhere.
type Layout struct{ root string }

// NewLayout returns the layout under dataDir (made absolute).
func NewLayout(dataDir string) (Layout, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return Layout{}, fmt.Errorf("data dir %q: %w", dataDir, err)
	}
	return Layout{root: abs}, nil
}

// LayoutAt is the layout under dataDir as given, not made absolute.
func LayoutAt(dataDir string) Layout { return Layout{root: filepath.Clean(dataDir)} }

// Root is the absolute data directory.
func (l Layout) Root() string { return l.root }

// Extracts is the folder holding one folder per source.
func (l Layout) Extracts() string { return filepath.Join(l.root, "extracts") }

// Source is the source's extract folder.
func (l Layout) Source(source string) (string, error) {
	p, err := l.sourcePath(source)
	if err != nil {
		return "", err
	}
	if err := l.contained(p); err != nil {
		return "", err
	}
	return p, nil
}

// sourcePath is the source's extract folder, its name validated; links
// are not looked at (the callers check the full path they build).
func (l Layout) sourcePath(source string) (string, error) {
	if err := ValidateName("source", source); err != nil {
		return "", err
	}
	return filepath.Join(l.Extracts(), source), nil
}

// under joins elems below the source's folder and checks the result stays
// inside it, as text and through links (one check of the whole path also
// covers the source folder on its way).
func (l Layout) under(source string, elems ...string) (string, error) {
	base, err := l.sourcePath(source)
	if err != nil {
		return "", err
	}
	p := filepath.Join(append([]string{base}, elems...)...)
	if rel, err := filepath.Rel(base, p); err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%w: path %q is not inside %s", ErrInvalidName, p, base)
	}
	if err := l.contained(p); err != nil {
		return "", err
	}
	return p, nil
}

// errPathEscapes is the error os.Root gives for a path that leads out of it
// (the os package does not export it).
var errPathEscapes = sync.OnceValue(func() error {
	r, err := os.OpenRoot(string(filepath.Separator))
	if err != nil {
		return nil
	}
	defer r.Close()
	_, err = r.Stat("..")
	return errors.Unwrap(err)
})

// Within refuses p unless it is inside the data dir, as text and through
// every symbolic link on its way: for paths the layout did not name itself
// (a file a catalog lists below the data folder).
func (l Layout) Within(p string) error {
	rel, err := filepath.Rel(l.root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return fmt.Errorf("%w: path %q is not inside the data dir %s", ErrInvalidName, p, l.root)
	}
	return l.contained(p)
}

// contained refuses p when it resolves, through a symbolic link inside the
// data dir, to somewhere outside it. The data dir is opened as an os.Root,
// which resolves each existing element of the path as the kernel would and
// stops where one leaves the root (a link with an absolute target always
// counts as leaving); elements that do not exist yet are fine. The data dir
// itself may be a link. Paths are checked when the layout
// names them; every service creates only real folders and hard links, so a
// link inside the data dir was put there by someone else.
func (l Layout) contained(p string) error {
	rel, err := filepath.Rel(l.root, p)
	if err != nil || rel == "." {
		return nil
	}
	r, err := os.OpenRoot(l.root)
	if err != nil {
		// No data dir yet: nothing inside it can be a link.
		return nil
	}
	defer r.Close()
	_, err = r.Stat(rel)
	if escape := errPathEscapes(); err != nil && escape != nil && errors.Is(err, escape) {
		return fmt.Errorf("%w: %s leads out of the data dir %s through a symbolic link; "+
			"replace the link with a real folder, or point the data dir at the link's target", ErrOutsideDataDir, p, l.root)
	}
	return nil
}

// Extract is the live extract.duckdb of source.
func (l Layout) Extract(source string) (string, error) { return l.under(source, ExtractFile) }

// Data is the folder the extract's views read.
func (l Layout) Data(source string) (string, error) { return l.under(source, DataFolder) }

// Staging is the folder of every run's parts of source.
func (l Layout) Staging(source string) (string, error) { return l.under(source, StagingFolder) }

// Rejected is where unusable streamed parts of source are set aside.
func (l Layout) Rejected(source string) (string, error) { return l.under(source, RejectedFolder) }

// RunStaging is the folder of one run's parts.
func (l Layout) RunStaging(source, run string) (string, error) {
	if err := ValidateRunID(run); err != nil {
		return "", err
	}
	return l.under(source, StagingFolder, run)
}

// TableStaging is the folder of one table's parts in one run.
func (l Layout) TableStaging(source, run, table string) (string, error) {
	if err := ValidateRunID(run); err != nil {
		return "", err
	}
	if err := ValidateName("table", table); err != nil {
		return "", err
	}
	return l.under(source, StagingFolder, run, table)
}

// Part is the path of a staged part.
func (l Layout) Part(source, run, table string, part PartName) (string, error) {
	dir, err := l.TableStaging(source, run, table)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, part.String()), nil
}

// TableLink is data/<table>.parquet: a link to the table's newest version,
// for consumers that scan data/.
func (l Layout) TableLink(source, table string) (string, error) {
	if err := ValidateName("table", table); err != nil {
		return "", err
	}
	return l.under(source, DataFolder, table+".parquet")
}

// VersionRel is the path, relative to the data folder, of the version of a
// batch table that run published.
func VersionRel(table, run string) (string, error) {
	if err := ValidateName("table", table); err != nil {
		return "", err
	}
	if err := ValidateRunID(run); err != nil || run == StreamRun {
		return "", fmt.Errorf("%w: version of %s: run id %q is not a UUID", ErrInvalidName, table, run)
	}
	return filepath.Join(VersionFolder, table, run+".parquet"), nil
}

// partitionFileRE is the name of a file of a partitioned table's month:
// a kind letter (s streamed part, r run part, c compaction, d delete
// markers) and a derived id.
var partitionFileRE = regexp.MustCompile(`^[a-z][A-Za-z0-9-]{0,127}\.parquet$`)

// PartitionRel is the path, relative to the data folder, of the file name
// of table's partition of month: <table>/month=YYYY-MM/<name>.
func PartitionRel(table, month, name string) (string, error) {
	if err := ValidateName("table", table); err != nil {
		return "", err
	}
	if err := ValidateMonth(month); err != nil {
		return "", err
	}
	if !partitionFileRE.MatchString(name) {
		return "", fmt.Errorf("%w: partition file name %q of %s", ErrInvalidName, name, table)
	}
	return filepath.Join(table, "month="+month, name), nil
}

// Version is the absolute path of the version of table that run published.
func (l Layout) Version(source, table, run string) (string, error) {
	rel, err := VersionRel(table, run)
	if err != nil {
		return "", err
	}
	return l.under(source, DataFolder, rel)
}

// InData joins a path relative to the data folder (as the finalizer's
// catalog records them) and refuses one that leaves it.
func (l Layout) InData(source, rel string) (string, error) {
	if filepath.IsAbs(rel) {
		return "", fmt.Errorf("%w: data path %q is absolute", ErrInvalidName, rel)
	}
	data, err := l.Data(source)
	if err != nil {
		return "", err
	}
	p := filepath.Join(data, rel)
	if r, err := filepath.Rel(data, p); err != nil || r == "." || strings.HasPrefix(r, "..") {
		return "", fmt.Errorf("%w: data path %q leaves %s", ErrInvalidName, rel, data)
	}
	if err := l.contained(p); err != nil {
		return "", err
	}
	return p, nil
}

// Parquet key-value metadata a writer puts in every part.
const (
	// SeqsMetaKey lists the data message sequence numbers a part holds,
	// with their row counts, in file order: "seq:rows,seq:rows,...".
	SeqsMetaKey = "agnes.seqs"
	// KeyColumnMetaKey names, in a part of a partitioned table, its
	// key-group column, so a part whose announcement expired can still be
	// published.
	KeyColumnMetaKey = "agnes.key_column"
)

// ParseSeqs parses the SeqsMetaKey value of a part: non-negative, strictly
// increasing seqs with non-negative row counts.
func ParseSeqs(s string) (seqs, rows []int64, err error) {
	if s == "" {
		return nil, nil, fmt.Errorf("part has no %s metadata", SeqsMetaKey)
	}
	for _, kv := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(kv, ":")
		sq, err1 := strconv.ParseInt(a, 10, 64)
		n, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || sq < 0 || n < 0 || (len(seqs) > 0 && sq <= seqs[len(seqs)-1]) {
			return nil, nil, fmt.Errorf("bad %s entry %q", SeqsMetaKey, kv)
		}
		seqs, rows = append(seqs, sq), append(rows, n)
	}
	return seqs, rows, nil
}
