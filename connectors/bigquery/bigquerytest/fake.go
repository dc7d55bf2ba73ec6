// Package bigquerytest is a fake Google BigQuery for tests, written from the
// public REST v2 reference: an OAuth token endpoint for the JWT bearer grant
// of a service-account key (signature, issuer, audience, expiry and scope
// checked), a GCE metadata server, datasets and tables listed in pages
// smaller than asked (pageToken), table get with nested schemas, queries
// (dry runs with totalBytesProcessed, jobComplete false for a while, result
// pages by pageToken in the f/v row form with TIMESTAMP as float seconds and
// BYTES as base64), 401 for unknown or revoked tokens, 403 for forbidden
// datasets, 404, and injected 429 rateLimitExceeded / 5xx backendError.
package bigquerytest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/bigquery"
)

// Table is a table (or view) of the fake. Rows hold Go values per column
// (nil, string, int64, float64, bool, time.Time, []byte, []any for REPEATED
// and RECORD), or RowCount rows come from Gen.
type Table struct {
	Dataset, ID string
	Type        string // TABLE (default), VIEW, MATERIALIZED_VIEW, EXTERNAL, ...
	Description string
	Fields      []bigquery.Field
	Rows        [][]any
	RowCount    int
	Gen         func(i int) []any
	NumBytes    int64
}

func (t *Table) rows() int {
	if t.Gen != nil {
		return t.RowCount
	}
	return len(t.Rows)
}

func (t *Table) row(i int) []any {
	if t.Gen != nil {
		return t.Gen(i)
	}
	return t.Rows[i]
}

// Server is a fake BigQuery with its token endpoint and metadata server.
type Server struct {
	*httptest.Server
	Project string
	// PageCap caps every list page (smaller than asked, as BigQuery may).
	PageCap int
	// PendingPolls is how many times a query answers jobComplete false.
	PendingPolls int
	// TokenTTL is the lifetime of issued tokens.
	TokenTTL time.Duration

	key    *rsa.PrivateKey
	email  string
	mu     sync.Mutex
	tables map[string]*Table // by dataset.table
	forbid map[string]bool
	tokens map[string]bool
	issued int
	jobs   map[string]*job
	faults []fault
	reqs   map[string]int
}

type job struct {
	table *Table
	polls int
}

type fault struct {
	prefix, reason string
	status, left   int
}

// New starts a fake BigQuery of project.
func New(project string) *Server {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	s := &Server{Project: project, PageCap: 2, TokenTTL: time.Hour, key: key, email: "agnes@" + project + ".iam.gserviceaccount.com",
		tables: map[string]*Table{}, forbid: map[string]bool{}, tokens: map[string]bool{}, jobs: map[string]*job{}, reqs: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Put adds a table.
func (s *Server) Put(t *Table) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.Type == "" {
		t.Type = "TABLE"
	}
	s.tables[t.Dataset+"."+t.ID] = t
}

// Remove deletes a table (a table that vanished after discovery).
func (s *Server) Remove(dataset, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tables, dataset+"."+id)
}

// Forbid makes listing a dataset's tables answer 403.
func (s *Server) Forbid(dataset string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forbid[dataset] = true
}

// Revoke invalidates every token issued so far.
func (s *Server) Revoke() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = map[string]bool{}
}

// TokensIssued counts tokens issued.
func (s *Server) TokensIssued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// Requests counts requests whose path starts with prefix.
func (s *Server) Requests(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, c := range s.reqs {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

// Fail makes the next n requests whose path starts with prefix answer
// status with reason.
func (s *Server) Fail(prefix string, status, n int, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{prefix: prefix, status: status, left: n, reason: reason})
}

// KeyFile writes a service-account key file whose token_uri is the fake's
// and returns its path (for GOOGLE_APPLICATION_CREDENTIALS).
func (s *Server) KeyFile(tb testing.TB) string {
	tb.Helper()
	pk := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(s.key)})
	b, _ := json.Marshal(map[string]string{"type": "service_account", "project_id": s.Project, "private_key_id": "k1",
		"private_key": string(pk), "client_email": s.email, "client_id": "1", "token_uri": s.URL + "/token"})
	p := filepath.Join(tb.TempDir(), "key.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// PrivateKeyPEM is the key's PEM, for tests checking it leaks nowhere.
func (s *Server) PrivateKeyPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(s.key)}))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, reason, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": status, "message": msg,
		"errors": []map[string]string{{"reason": reason, "message": msg}}}})
}

func (s *Server) token(w http.ResponseWriter) {
	s.mu.Lock()
	s.issued++
	tok := fmt.Sprintf("ya29.fake-%d", s.issued)
	s.tokens[tok] = true
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "expires_in": int(s.TokenTTL.Seconds()), "token_type": "Bearer"})
}

// jwtGrant checks a JWT bearer assertion the way Google's token endpoint
// does: RS256 signature by the key, issuer, audience, expiry, scope.
func (s *Server) jwtGrant(assertion string) error {
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return fmt.Errorf("assertion is not a JWT")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("bad signature encoding")
	}
	h := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&s.key.PublicKey, crypto.SHA256, h[:], sig); err != nil {
		return fmt.Errorf("invalid JWT signature")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return fmt.Errorf("bad claims encoding")
	}
	var c struct {
		Iss   string `json:"iss"`
		Aud   string `json:"aud"`
		Scope string `json:"scope"`
		Exp   int64  `json:"exp"`
		Iat   int64  `json:"iat"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("bad claims")
	}
	switch {
	case c.Iss != s.email:
		return fmt.Errorf("unknown issuer %q", c.Iss)
	case c.Aud != s.URL+"/token":
		return fmt.Errorf("audience %q is not the token endpoint", c.Aud)
	case time.Unix(c.Exp, 0).Before(time.Now()):
		return fmt.Errorf("assertion expired")
	case !strings.Contains(c.Scope, "bigquery"):
		return fmt.Errorf("scope %q grants no BigQuery access", c.Scope)
	}
	return nil
}

var queryRE = regexp.MustCompile("(?i)^SELECT \\* FROM `([^`.]+)\\.([^`.]+)\\.([^`.]+)`\\s*$")

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.reqs[r.URL.Path]++
	for i := range s.faults {
		f := &s.faults[i]
		if f.left > 0 && strings.HasPrefix(r.URL.Path, f.prefix) {
			f.left--
			s.mu.Unlock()
			apiError(w, f.status, f.reason, "injected "+f.reason)
			return
		}
	}
	s.mu.Unlock()
	switch {
	case r.URL.Path == "/token" && r.Method == http.MethodPost:
		r.ParseForm()
		if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
			return
		}
		if err := s.jwtGrant(r.PostForm.Get("assertion")); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": err.Error()})
			return
		}
		s.token(w)
		return
	case strings.HasPrefix(r.URL.Path, "/computeMetadata/v1/"):
		if r.Header.Get("Metadata-Flavor") != "Google" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		switch r.URL.Path {
		case "/computeMetadata/v1/instance/service-accounts/default/token":
			s.token(w)
		case "/computeMetadata/v1/project/project-id":
			fmt.Fprint(w, s.Project)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
		return
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	ok := s.tokens[tok]
	s.mu.Unlock()
	if !ok {
		apiError(w, http.StatusUnauthorized, "authError", "Request had invalid authentication credentials.")
		return
	}
	p := strings.Split(strings.TrimPrefix(r.URL.Path, "/bigquery/v2/projects/"), "/")
	switch {
	case len(p) == 2 && p[1] == "datasets":
		s.listDatasets(w, r)
	case len(p) == 4 && p[1] == "datasets" && p[3] == "tables":
		s.listTables(w, r, p[2])
	case len(p) == 5 && p[1] == "datasets" && p[3] == "tables":
		s.getTable(w, p[2], p[4])
	case len(p) == 2 && p[1] == "queries" && r.Method == http.MethodPost:
		s.query(w, r)
	case len(p) == 3 && p[1] == "queries":
		s.results(w, r, p[2])
	default:
		apiError(w, http.StatusNotFound, "notFound", "Not found: "+r.URL.Path)
	}
}

// pageOf returns the items of page token (an offset) and the next token.
func (s *Server) pageOf(r *http.Request, n int) (lo, hi int, next string) {
	lo, _ = strconv.Atoi(r.URL.Query().Get("pageToken"))
	size, _ := strconv.Atoi(r.URL.Query().Get("maxResults"))
	if size <= 0 || size > s.PageCap {
		size = s.PageCap
	}
	hi = min(lo+size, n)
	if hi < n {
		next = strconv.Itoa(hi)
	}
	return lo, hi, next
}

func (s *Server) listDatasets(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	set := map[string]bool{}
	for _, t := range s.tables {
		set[t.Dataset] = true
	}
	for d := range s.forbid {
		set[d] = true
	}
	s.mu.Unlock()
	var ids []string
	for d := range set {
		ids = append(ids, d)
	}
	sort.Strings(ids)
	lo, hi, next := s.pageOf(r, len(ids))
	var ds []map[string]any
	for _, d := range ids[lo:hi] {
		ds = append(ds, map[string]any{"datasetReference": map[string]string{"projectId": s.Project, "datasetId": d}})
	}
	writeJSON(w, http.StatusOK, map[string]any{"datasets": ds, "nextPageToken": next})
}

func (s *Server) listTables(w http.ResponseWriter, r *http.Request, dataset string) {
	s.mu.Lock()
	forbidden := s.forbid[dataset]
	var list []*Table
	for _, t := range s.tables {
		if t.Dataset == dataset {
			list = append(list, t)
		}
	}
	s.mu.Unlock()
	if forbidden {
		apiError(w, http.StatusForbidden, "accessDenied", fmt.Sprintf("Access Denied: Dataset %s:%s: Permission bigquery.tables.list denied", s.Project, dataset))
		return
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	lo, hi, next := s.pageOf(r, len(list))
	var out []map[string]any
	for _, t := range list[lo:hi] {
		out = append(out, map[string]any{"tableReference": bigquery.TableRef{ProjectID: s.Project, DatasetID: t.Dataset, TableID: t.ID}, "type": t.Type})
	}
	writeJSON(w, http.StatusOK, map[string]any{"tables": out, "nextPageToken": next, "totalItems": len(list)})
}

func (s *Server) getTable(w http.ResponseWriter, dataset, id string) {
	s.mu.Lock()
	t, ok := s.tables[dataset+"."+id]
	s.mu.Unlock()
	if !ok {
		apiError(w, http.StatusNotFound, "notFound", fmt.Sprintf("Not found: Table %s:%s.%s", s.Project, dataset, id))
		return
	}
	writeJSON(w, http.StatusOK, bigquery.Table{TableReference: bigquery.TableRef{ProjectID: s.Project, DatasetID: dataset, TableID: id},
		Type: t.Type, Description: t.Description, Schema: &bigquery.Schema{Fields: t.Fields}, NumRows: strconv.Itoa(t.rows()),
		NumBytes: strconv.FormatInt(t.NumBytes, 10), Location: "EU"})
}

func (s *Server) query(w http.ResponseWriter, r *http.Request) {
	var q bigquery.QueryRequest
	if err := json.NewDecoder(r.Body).Decode(&q); err != nil {
		apiError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	m := queryRE.FindStringSubmatch(q.Query)
	if m == nil {
		apiError(w, http.StatusBadRequest, "invalidQuery", "Syntax error: the fake runs only SELECT * FROM `p.d.t`")
		return
	}
	s.mu.Lock()
	t, ok := s.tables[m[2]+"."+m[3]]
	s.mu.Unlock()
	if !ok || m[1] != s.Project {
		apiError(w, http.StatusNotFound, "notFound", fmt.Sprintf("Not found: Table %s:%s.%s", m[1], m[2], m[3]))
		return
	}
	schema := &bigquery.Schema{Fields: t.Fields}
	if q.DryRun {
		writeJSON(w, http.StatusOK, map[string]any{"jobComplete": true, "schema": schema, "totalBytesProcessed": strconv.FormatInt(t.NumBytes, 10)})
		return
	}
	s.mu.Lock()
	id := fmt.Sprintf("job_%d", len(s.jobs)+1)
	j := &job{table: t}
	s.jobs[id] = j
	pending := s.PendingPolls
	s.mu.Unlock()
	ref := bigquery.JobRef{ProjectID: s.Project, JobID: id, Location: "EU"}
	if pending > 0 {
		writeJSON(w, http.StatusOK, map[string]any{"jobComplete": false, "jobReference": ref})
		return
	}
	s.page(w, ref, j, 0, q.MaxResults)
}

func (s *Server) results(w http.ResponseWriter, r *http.Request, id string) {
	s.mu.Lock()
	j, ok := s.jobs[id]
	if ok {
		j.polls++
	}
	pending := s.PendingPolls
	s.mu.Unlock()
	if !ok {
		apiError(w, http.StatusNotFound, "notFound", "Not found: Job "+id)
		return
	}
	ref := bigquery.JobRef{ProjectID: s.Project, JobID: id, Location: r.URL.Query().Get("location")}
	if j.polls < pending {
		writeJSON(w, http.StatusOK, map[string]any{"jobComplete": false, "jobReference": ref})
		return
	}
	lo, _ := strconv.Atoi(r.URL.Query().Get("pageToken"))
	n, _ := strconv.Atoi(r.URL.Query().Get("maxResults"))
	s.page(w, ref, j, lo, n)
}

// page writes result rows [lo, lo+n) of a job in the f/v form.
func (s *Server) page(w http.ResponseWriter, ref bigquery.JobRef, j *job, lo, n int) {
	t := j.table
	if n <= 0 || n > 100_000 {
		n = 100_000
	}
	hi := min(lo+n, t.rows())
	rows := make([]map[string]any, 0, hi-lo)
	for i := lo; i < hi; i++ {
		rows = append(rows, Row(t.Fields, t.row(i)))
	}
	out := map[string]any{"jobComplete": true, "jobReference": ref, "schema": bigquery.Schema{Fields: t.Fields}, "rows": rows,
		"totalRows": strconv.Itoa(t.rows())}
	if hi < t.rows() {
		out["pageToken"] = strconv.Itoa(hi)
	}
	writeJSON(w, http.StatusOK, out)
}

// Row renders Go values in BigQuery's f/v form: {"f": [{"v": ...}, ...]}.
func Row(fields []bigquery.Field, vals []any) map[string]any {
	cells := make([]any, len(fields))
	for i, f := range fields {
		cells[i] = map[string]any{"v": Cell(f, vals[i])}
	}
	return map[string]any{"f": cells}
}

// Cell renders one value as the API does: scalars as strings (TIMESTAMP as
// float seconds in exponent form, BYTES as base64), REPEATED as a list of
// {"v": ...}, RECORD as {"f": [...]}.
func Cell(f bigquery.Field, v any) any {
	if v == nil {
		return nil
	}
	if strings.EqualFold(f.Mode, "REPEATED") {
		items := v.([]any)
		out := make([]any, len(items))
		elem := f
		elem.Mode = "NULLABLE"
		for i, it := range items {
			out[i] = map[string]any{"v": Cell(elem, it)}
		}
		return out
	}
	switch strings.ToUpper(f.Type) {
	case "RECORD", "STRUCT":
		return Row(f.Fields, v.([]any))
	case "TIMESTAMP":
		t := v.(time.Time)
		secs := float64(t.Unix()) + float64(t.Nanosecond()/1000)/1e6
		return strconv.FormatFloat(secs, 'E', -1, 64)
	case "DATE":
		return v.(time.Time).Format("2006-01-02")
	case "DATETIME":
		return v.(time.Time).Format("2006-01-02T15:04:05.999999")
	case "TIME":
		return v.(time.Time).Format("15:04:05.999999")
	case "BYTES":
		return base64.StdEncoding.EncodeToString(v.([]byte))
	}
	switch x := v.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return fmt.Sprint(v)
}
