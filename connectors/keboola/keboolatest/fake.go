// Package keboolatest is a fake Keboola Storage API v2 for tests, written
// from Keboola's public API reference: buckets, tables with columns, column
// metadata from several providers (or none, or PHP's [] for empty), table
// detail, POST export-async answered by a job polled at GET /jobs/{id}
// (waiting, processing, then success or error with a message), file detail
// with a signed URL that expires, sliced exports (a JSON manifest of signed
// slice URLs; slices are gzipped CSV without a header row) and unsliced
// ones (gzipped CSV with a header), changedSince filtering by each row's
// change time, the X-StorageApi-Token header (401), and injected 429/503
// answers with Retry-After. Downloads record whether the Storage token was
// sent to the file host.
package keboolatest

import (
	"bytes"
	"compress/gzip"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/keboola"
)

// Table is a table of the fake. Its rows are Rows, or RowCount rows made by
// Gen; Changed gives each row's change time (default: the table's Changed0).
type Table struct {
	Bucket, Name string
	Columns      []string
	// ColumnMetadata per column; EmptyMetadataAsArray renders an empty map
	// as [] the way the PHP API does.
	ColumnMetadata       map[string][]keboola.MetadataEntry
	EmptyMetadataAsArray bool
	PrimaryKey           []string
	Description          string
	Rows                 [][]string
	RowCount             int
	Gen                  func(i int) []string
	ChangedAt            func(i int) time.Time
	// FailExport makes every export job of the table end in error.
	FailExport string
	// Unsliced exports the table as one file with a header row.
	Unsliced bool
}

// ID is the table's Keboola id: <bucket>.<name>.
func (t *Table) ID() string { return t.Bucket + "." + t.Name }

func (t *Table) rows() int {
	if t.Gen != nil {
		return t.RowCount
	}
	return len(t.Rows)
}

func (t *Table) row(i int) []string {
	if t.Gen != nil {
		return t.Gen(i)
	}
	return t.Rows[i]
}

// Server is a fake Storage API.
type Server struct {
	*httptest.Server
	Token string
	// SliceRows is the rows per slice of a sliced export.
	SliceRows int
	// URLTTL is how long a signed URL stays valid.
	URLTTL time.Duration
	// JobPolls is how many polls a job answers processing before its end.
	JobPolls int
	// ClockSkew is added to the fake's clock (job times, changedSince
	// filtering): Keboola's clock need not be the connector's.
	ClockSkew time.Duration
	// ListWithoutColumns makes the table listing omit columns, metadata and
	// keys, as stacks that ignore include do; the detail has them.
	ListWithoutColumns bool
	// CacheSlices keeps the gzipped slices of full exports once made, so a
	// benchmark measures the reader, not the fake's compression.
	CacheSlices bool

	mu         sync.Mutex
	buckets    []keboola.Bucket
	tables     map[string]*Table
	jobs       map[int64]*job
	files      map[int64]*file
	nextID     int64
	faults     []fault
	requests   map[string]int
	tokenLeaks int
	expireNext int
	exports    []string
	cache      map[string][]byte
}

type job struct {
	polls   int
	fileID  int64
	err     string
	created time.Time
}

// Now is the fake Keboola's clock: the local one plus ClockSkew, to the
// second as the API writes times.
func (s *Server) Now() time.Time { return time.Now().Add(s.ClockSkew).Truncate(time.Second) }

type file struct {
	table *Table
	rows  []int // row indexes in the export
	full  bool  // every row (no changedSince)
}

type fault struct {
	prefix, retryAfter string
	status, left       int
}

// New starts a fake Storage API accepting token.
func New(token string) *Server {
	s := &Server{Token: token, SliceRows: 1000, URLTTL: time.Hour, JobPolls: 2, tables: map[string]*Table{}, jobs: map[int64]*job{},
		files: map[int64]*file{}, requests: map[string]int{}, nextID: 100}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Put adds a table (and its bucket).
func (s *Server) Put(t *Table) {
	s.mu.Lock()
	defer s.mu.Unlock()
	found := false
	for _, b := range s.buckets {
		found = found || b.ID == t.Bucket
	}
	if !found {
		stage, name, _ := strings.Cut(t.Bucket, ".")
		s.buckets = append(s.buckets, keboola.Bucket{ID: t.Bucket, Name: name, Stage: stage})
	}
	s.tables[t.ID()] = t
}

// Fail makes the next n requests whose path starts with prefix answer
// status (with Retry-After when set).
func (s *Server) Fail(prefix string, status, n int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{prefix: prefix, status: status, left: n, retryAfter: retryAfter})
}

// ExpireNext makes the next n downloads answer 403, as an expired signed
// URL does.
func (s *Server) ExpireNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireNext = n
}

// Requests counts requests whose path starts with prefix.
func (s *Server) Requests(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, c := range s.requests {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

// TokenLeaks counts downloads that carried the Storage token.
func (s *Server) TokenLeaks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenLeaks
}

// Exports lists the changedSince of every export of table id, in order
// ("" = a full export).
func (s *Server) Exports(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.exports {
		if t, since, _ := strings.Cut(e, "\x00"); t == id {
			out = append(out, since)
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": msg, "code": code, "status": "error"})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests[r.URL.Path]++
	for i := range s.faults {
		f := &s.faults[i]
		if f.left > 0 && strings.HasPrefix(r.URL.Path, f.prefix) {
			f.left--
			s.mu.Unlock()
			if f.retryAfter != "" {
				w.Header().Set("Retry-After", f.retryAfter)
			}
			apiError(w, f.status, "", http.StatusText(f.status))
			return
		}
	}
	s.mu.Unlock()
	if strings.HasPrefix(r.URL.Path, "/download/") {
		s.download(w, r)
		return
	}
	if r.Header.Get("X-StorageApi-Token") != s.Token {
		apiError(w, http.StatusUnauthorized, "storage.tokenInvalid", "Invalid access token")
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/storage")
	switch {
	case p == "/tokens/verify" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{"id": "1", "description": "fake token", "canReadAllFileUploads": false})
	case p == "/buckets" && r.Method == http.MethodGet:
		s.mu.Lock()
		out := append([]keboola.Bucket{}, s.buckets...)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	case strings.HasPrefix(p, "/buckets/") && strings.HasSuffix(p, "/tables"):
		bucket := strings.TrimSuffix(strings.TrimPrefix(p, "/buckets/"), "/tables")
		s.mu.Lock()
		var ids []string
		for id, t := range s.tables {
			if t.Bucket == bucket {
				ids = append(ids, id)
			}
		}
		sort.Strings(ids)
		var out []json.RawMessage
		for _, id := range ids {
			if s.ListWithoutColumns {
				b, _ := json.Marshal(map[string]any{"id": id, "name": s.tables[id].Name})
				out = append(out, b)
				continue
			}
			out = append(out, s.render(s.tables[id]))
		}
		s.mu.Unlock()
		if out == nil {
			out = []json.RawMessage{}
		}
		writeJSON(w, http.StatusOK, out)
	case strings.HasPrefix(p, "/tables/") && strings.HasSuffix(p, "/export-async") && r.Method == http.MethodPost:
		s.export(w, r, strings.TrimSuffix(strings.TrimPrefix(p, "/tables/"), "/export-async"))
	case strings.HasPrefix(p, "/tables/") && r.Method == http.MethodGet:
		s.mu.Lock()
		t, ok := s.tables[strings.TrimPrefix(p, "/tables/")]
		var b json.RawMessage
		if ok {
			b = s.render(t)
		}
		s.mu.Unlock()
		if !ok {
			apiError(w, http.StatusNotFound, "storage.tables.notFound", "The table was not found")
			return
		}
		writeJSON(w, http.StatusOK, b)
	case strings.HasPrefix(p, "/jobs/"):
		s.job(w, strings.TrimPrefix(p, "/jobs/"))
	case strings.HasPrefix(p, "/files/"):
		s.fileDetail(w, r, strings.TrimPrefix(p, "/files/"))
	default:
		apiError(w, http.StatusNotFound, "notFound", "No such resource")
	}
}

// render is a table as the list and detail endpoints answer it.
func (s *Server) render(t *Table) json.RawMessage {
	m := map[string]any{"id": t.ID(), "name": t.Name, "displayName": t.Name, "primaryKey": t.PrimaryKey, "columns": t.Columns,
		"rowsCount": t.rows(), "dataSizeBytes": 1024 * t.rows(), "lastChangeDate": time.Now().Format(keboola.TimeLayout),
		"bucket": map[string]any{"id": t.Bucket}}
	if t.PrimaryKey == nil {
		m["primaryKey"] = []string{}
	}
	if len(t.ColumnMetadata) == 0 && t.EmptyMetadataAsArray {
		m["columnMetadata"] = []any{}
	} else {
		cm := map[string][]keboola.MetadataEntry{}
		for k, v := range t.ColumnMetadata {
			cm[k] = v
		}
		m["columnMetadata"] = cm
	}
	md := []keboola.MetadataEntry{}
	if t.Description != "" {
		md = append(md, keboola.MetadataEntry{Key: "KBC.description", Value: t.Description, Provider: "user"})
	}
	m["metadata"] = md
	b, _ := json.Marshal(m)
	return b
}

func (s *Server) export(w http.ResponseWriter, r *http.Request, id string) {
	if err := r.ParseForm(); err != nil {
		apiError(w, http.StatusBadRequest, "validation", err.Error())
		return
	}
	since := r.PostForm.Get("changedSince")
	var from time.Time
	if since != "" {
		if n, err := strconv.ParseInt(since, 10, 64); err == nil {
			from = time.Unix(n, 0)
		} else if t, err := time.Parse(time.RFC3339, since); err == nil {
			from = t
		} else {
			apiError(w, http.StatusBadRequest, "validation", "changedSince is not a valid time: "+since)
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tables[id]
	if !ok {
		apiError(w, http.StatusNotFound, "storage.tables.notFound", "The table "+id+" was not found")
		return
	}
	s.exports = append(s.exports, id+"\x00"+since)
	f := &file{table: t, full: since == ""}
	for i := range t.rows() {
		if since == "" || t.ChangedAt == nil || !t.ChangedAt(i).Before(from) {
			f.rows = append(f.rows, i)
		}
	}
	s.nextID++
	fileID := s.nextID
	s.files[fileID] = f
	s.nextID++
	j := &job{fileID: fileID, err: t.FailExport, created: s.Now()}
	s.jobs[s.nextID] = j
	writeJSON(w, http.StatusAccepted, keboola.Job{ID: s.nextID, Status: "waiting", URL: s.URL + "/v2/storage/jobs/" + strconv.FormatInt(s.nextID, 10),
		CreatedTime: j.created.Format(keboola.TimeLayout)})
}

func (s *Server) job(w http.ResponseWriter, id string) {
	n, _ := strconv.ParseInt(id, 10, 64)
	s.mu.Lock()
	j, ok := s.jobs[n]
	if ok {
		j.polls++
	}
	polls := s.JobPolls
	s.mu.Unlock()
	if !ok {
		apiError(w, http.StatusNotFound, "storage.jobs.notFound", "Job not found")
		return
	}
	out := map[string]any{"id": n, "status": "processing", "operationName": "tableExport", "createdTime": j.created.Format(keboola.TimeLayout),
		"startTime": j.created.Add(time.Second).Format(keboola.TimeLayout)}
	switch {
	case j.polls <= polls:
	case j.err != "":
		out["status"] = "error"
		out["error"] = map[string]any{"message": j.err, "code": "storage.jobFailed"}
	default:
		out["status"] = "success"
		out["results"] = map[string]any{"file": map[string]any{"id": j.fileID}}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) sign(path string) string {
	exp := strconv.FormatInt(time.Now().Add(s.URLTTL).UnixNano(), 10)
	m := hmac.New(sha256.New, []byte("fake-file-host"))
	m.Write([]byte(path + exp))
	return s.URL + path + "?exp=" + exp + "&sig=" + hex.EncodeToString(m.Sum(nil))
}

func (s *Server) fileDetail(w http.ResponseWriter, r *http.Request, id string) {
	n, _ := strconv.ParseInt(id, 10, 64)
	s.mu.Lock()
	f, ok := s.files[n]
	s.mu.Unlock()
	if !ok {
		apiError(w, http.StatusNotFound, "storage.files.notFound", "File not found")
		return
	}
	name := f.table.ID() + ".csv.gz"
	out := keboola.File{ID: n, Name: name, IsSliced: !f.table.Unsliced}
	if out.IsSliced {
		out.URL = s.sign(fmt.Sprintf("/download/%d/manifest", n))
	} else {
		out.URL = s.sign(fmt.Sprintf("/download/%d/%s", n, name))
	}
	writeJSON(w, http.StatusOK, out)
}

// download serves signed URLs: the manifest, a slice or the whole file.
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if r.Header.Get("X-StorageApi-Token") != "" {
		s.tokenLeaks++
	}
	expired := s.expireNext > 0
	if expired {
		s.expireNext--
	}
	s.mu.Unlock()
	exp, _ := strconv.ParseInt(r.URL.Query().Get("exp"), 10, 64)
	m := hmac.New(sha256.New, []byte("fake-file-host"))
	m.Write([]byte(r.URL.Path + r.URL.Query().Get("exp")))
	if expired || time.Now().UnixNano() > exp || r.URL.Query().Get("sig") != hex.EncodeToString(m.Sum(nil)) {
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>`)
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/download/"), "/")
	n, _ := strconv.ParseInt(parts[0], 10, 64)
	s.mu.Lock()
	f, ok := s.files[n]
	sliceRows := s.SliceRows
	s.mu.Unlock()
	if !ok || len(parts) != 2 {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	switch {
	case parts[1] == "manifest":
		var m keboola.SliceManifest
		for i := 0; i*sliceRows < len(f.rows); i++ {
			m.Entries = append(m.Entries, struct {
				URL string `json:"url"`
			}{URL: s.sign(fmt.Sprintf("/download/%d/slice%03d.csv.gz", n, i))})
		}
		if m.Entries == nil {
			m.Entries = []struct {
				URL string `json:"url"`
			}{}
		}
		writeJSON(w, http.StatusOK, m)
	case strings.HasPrefix(parts[1], "slice"):
		s.slice(w, f, n, parts[1], sliceRows)
	default:
		w.Header().Set("Content-Type", "application/octet-stream")
		writeCSV(w, f, 0, len(f.rows), true)
	}
}

// slice serves one sliced file of an export (cached when asked, as a real
// file host serves the same bytes every time).
func (s *Server) slice(w http.ResponseWriter, f *file, n int64, name string, sliceRows int) {
	i, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, "slice"), ".csv.gz"))
	if err != nil {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	lo, hi := i*sliceRows, min((i+1)*sliceRows, len(f.rows))
	if lo >= hi && lo > 0 {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	s.mu.Lock()
	cache := s.CacheSlices && f.full
	key := fmt.Sprintf("%s/%d/%d", f.table.ID(), sliceRows, i)
	b, ok := s.cache[key]
	s.mu.Unlock()
	if cache {
		if !ok {
			var buf bytes.Buffer
			writeCSV(&buf, f, lo, hi, false)
			b = buf.Bytes()
			s.mu.Lock()
			if s.cache == nil {
				s.cache = map[string][]byte{}
			}
			s.cache[key] = b
			s.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(b)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	writeCSV(w, f, lo, hi, false)
}

// writeCSV writes rows [lo, hi) of an export as gzipped RFC 4180 CSV,
// streamed (a large table is never held whole). Every value is quoted, as
// Keboola writes; null ("") is written as "".
func writeCSV(w io.Writer, f *file, lo, hi int, header bool) {
	zw := gzip.NewWriter(w)
	bw := newQuoter(zw)
	if header {
		bw.write(f.table.Columns)
	}
	for _, i := range f.rows[lo:hi] {
		bw.write(f.table.row(i))
	}
	zw.Close()
}

// quoter writes CSV records with every field quoted.
type quoter struct {
	raw interface{ Write([]byte) (int, error) }
	buf []byte
}

func newQuoter(w interface{ Write([]byte) (int, error) }) *quoter { return &quoter{raw: w} }

func (q *quoter) write(rec []string) {
	q.buf = q.buf[:0]
	for i, v := range rec {
		if i > 0 {
			q.buf = append(q.buf, ',')
		}
		q.buf = append(q.buf, '"')
		q.buf = append(q.buf, strings.ReplaceAll(v, `"`, `""`)...)
		q.buf = append(q.buf, '"')
	}
	q.buf = append(q.buf, '\n')
	q.raw.Write(q.buf)
}
