// Package tokens keeps the sync API's tokens: each a name, a role, an
// expiry and the SHA-256 of a 256-bit random secret, in the KV bucket
// AGNES_TOKENS, so every API replica sees a revocation at its next request.
// The token itself is shown once, when it is made, and stored nowhere.
// Creating, revoking and the first use from a new address are audited
// (audit.go). See docs/security.md.
package tokens

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go/jetstream"
)

// Role is what a token may do; each role may do what the one before may.
type Role string

// Roles, from least to most.
const (
	Viewer   Role = "viewer"   // status, runs, tables, dead letters, metrics
	Operator Role = "operator" // + trigger and cancel runs
	Admin    Role = "admin"    // + tokens
)

// Roles are the roles, least first.
var Roles = []Role{Viewer, Operator, Admin}

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	if slices.Contains(Roles, Role(s)) {
		return Role(s), nil
	}
	return "", fmt.Errorf("role %s is not one of viewer, operator, admin", schemas.Clip(s))
}

// Allows says whether r may do what need may.
func (r Role) Allows(need Role) bool {
	have, want := slices.Index(Roles, r), slices.Index(Roles, need)
	return have >= 0 && want >= 0 && have >= want
}

// Token is a token's record: never the token, only its hash.
type Token struct {
	Name       string     `json:"name"`
	Role       Role       `json:"role"`
	Hash       string     `json:"hash,omitempty"` // hex SHA-256 of the token; cleared by List
	CreatedAt  time.Time  `json:"created_at"`
	CreatedBy  string     `json:"created_by,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	LastUsedIP string     `json:"last_used_ip,omitempty"`
	// IPs are the addresses it was used from (the last MaxIPs), to audit
	// the first use from a new one.
	IPs []string `json:"ips,omitempty"`
}

// Expired says whether t has expired at now.
func (t Token) Expired(now time.Time) bool { return t.ExpiresAt != nil && !now.Before(*t.ExpiresAt) }

// Limits.
const (
	// MaxIPs is how many addresses a token remembers.
	MaxIPs = 32
	// UseInterval is how often a token's last use is written when it is
	// used again from the same address.
	UseInterval = time.Minute
	// Prefix starts every token, so a scanner can spot one.
	Prefix      = "agt_"
	secretBytes = 32
)

// Errors.
var (
	ErrExists   = errors.New("a token of that name exists")
	ErrNotFound = errors.New("no token of that name")
	// ErrInvalid: unknown, wrong, revoked or expired; the caller learns no more.
	ErrInvalid = errors.New("invalid or expired token")
)

// Store reads and writes the token records.
type Store struct {
	kv    jetstream.KeyValue
	audit *Audit
	log   *slog.Logger
	now   func() time.Time
}

// Open opens the tokens bucket and the audit stream.
func Open(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	kv, err := natsbus.KeyValue(ctx, js, schemas.TokenBucket)
	if err != nil {
		return nil, err
	}
	return &Store{kv: kv, audit: &Audit{js: js, log: log}, log: log, now: func() time.Time { return time.Now().UTC() }}, nil
}

// Audit is the store's audit log.
func (s *Store) Audit() *Audit { return s.audit }

// ParseExpiry parses a lifetime: a number of days ("30d") or weeks ("2w"),
// a Go duration ("12h"), or "never" (0).
func ParseExpiry(s string) (time.Duration, error) {
	bad := fmt.Errorf("expiry %s is not a lifetime such as 30d, 2w, 12h or never", schemas.Clip(s))
	switch {
	case s == "never":
		return 0, nil
	case strings.HasSuffix(s, "d") || strings.HasSuffix(s, "w"):
		n, err := strconv.Atoi(s[:len(s)-1])
		if err != nil || n < 1 || n > 3650 {
			return 0, bad
		}
		d := time.Duration(n) * 24 * time.Hour
		if strings.HasSuffix(s, "w") {
			d *= 7
		}
		return d, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Minute {
		return 0, bad
	}
	return d, nil
}

// DefaultExpiry is a new token's lifetime when none is given.
const DefaultExpiry = 90 * 24 * time.Hour

// Create makes a token named name with role, valid for ttl (0: no
// expiry), and returns it: the only time it is seen. by says who made it
// (for the audit).
func (s *Store) Create(ctx context.Context, name string, role Role, ttl time.Duration, by, ip string) (string, Token, error) {
	if err := schemas.ValidateName("token name", name); err != nil {
		return "", Token{}, err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", Token{}, err
	}
	raw := make([]byte, secretBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", Token{}, err
	}
	secret := Prefix + name + "_" + hex.EncodeToString(raw)
	now := s.now()
	t := Token{Name: name, Role: role, Hash: hash(secret), CreatedAt: now, CreatedBy: by}
	if ttl > 0 {
		exp := now.Add(ttl)
		t.ExpiresAt = &exp
	}
	b, err := json.Marshal(t)
	if err != nil {
		return "", Token{}, err
	}
	if _, err := s.kv.Create(ctx, name, b); errors.Is(err, jetstream.ErrKeyExists) {
		return "", Token{}, fmt.Errorf("%w: %s (revoke it first, or pick another name to rotate)", ErrExists, name)
	} else if err != nil {
		return "", Token{}, fmt.Errorf("store token %s: %w", name, err)
	}
	s.audit.Record(ctx, Entry{Action: ActionCreated, Token: name, Role: role, By: by, IP: ip, ExpiresAt: t.ExpiresAt})
	t.Hash = ""
	return secret, t, nil
}

// List returns every token's record, by name, without hashes.
func (s *Store) List(ctx context.Context) ([]Token, error) {
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var out []Token
	for name := range keys.Keys() {
		t, _, err := s.get(ctx, name)
		if errors.Is(err, ErrNotFound) {
			continue // revoked meanwhile
		}
		if err != nil {
			return nil, err
		}
		t.Hash = ""
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Token) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Revoke deletes the token named name: every API refuses it from its next
// request on.
func (s *Store) Revoke(ctx context.Context, name, by, ip string) error {
	if err := schemas.ValidateName("token name", name); err != nil {
		return err
	}
	t, rev, err := s.get(ctx, name)
	if err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, name, jetstream.LastRevision(rev)); err != nil {
		return fmt.Errorf("revoke token %s: %w", name, err)
	}
	s.audit.Record(ctx, Entry{Action: ActionRevoked, Token: name, Role: t.Role, By: by, IP: ip})
	return nil
}

// Authenticate returns the record of the token secret, used from ip, or
// ErrInvalid. It notes the use (at most every UseInterval from one
// address) and audits the first use from a new address.
func (s *Store) Authenticate(ctx context.Context, secret, ip string) (Token, error) {
	name, ok := nameOf(secret)
	if !ok {
		return Token{}, ErrInvalid
	}
	want := hash(secret)
	for range 5 {
		t, rev, err := s.get(ctx, name)
		if errors.Is(err, ErrNotFound) {
			return Token{}, ErrInvalid
		}
		if err != nil {
			return Token{}, err
		}
		if subtle.ConstantTimeCompare([]byte(t.Hash), []byte(want)) != 1 || t.Expired(s.now()) {
			return Token{}, ErrInvalid
		}
		now := s.now()
		newIP := ip != "" && !slices.Contains(t.IPs, ip)
		if !newIP && t.LastUsedIP == ip && t.LastUsedAt != nil && now.Sub(*t.LastUsedAt) < UseInterval {
			return t, nil
		}
		t.LastUsedAt, t.LastUsedIP = &now, ip
		if newIP {
			t.IPs = append(t.IPs, ip)
			if len(t.IPs) > MaxIPs {
				t.IPs = t.IPs[len(t.IPs)-MaxIPs:]
			}
		}
		b, err := json.Marshal(t)
		if err != nil {
			return Token{}, err
		}
		_, err = s.kv.Update(ctx, name, b, rev)
		if err == nil {
			if newIP {
				s.audit.Record(ctx, Entry{Action: ActionNewIP, Token: name, Role: t.Role, By: name, IP: ip})
			}
			return t, nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			// The use is valid; failing to note it must not refuse it.
			s.log.Warn("could not note a token's use", "token", name, "err", err)
			return t, nil
		}
		// Another replica noted a use meanwhile, or it was revoked: read
		// it again.
	}
	return Token{}, fmt.Errorf("token %s: its record keeps changing", name)
}

func (s *Store) get(ctx context.Context, name string) (Token, uint64, error) {
	e, err := s.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Token{}, 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return Token{}, 0, fmt.Errorf("read token %s: %w", name, err)
	}
	var t Token
	if err := json.Unmarshal(e.Value(), &t); err != nil || t.Name != name {
		return Token{}, 0, fmt.Errorf("token %s: stored record is malformed", name)
	}
	return t, e.Revision(), nil
}

func hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// nameOf is the name in a token "agt_<name>_<64 hex digits>", when it has
// that shape.
func nameOf(secret string) (string, bool) {
	rest, ok := strings.CutPrefix(secret, Prefix)
	if !ok || len(rest) < 2*secretBytes+2 {
		return "", false
	}
	name, hexPart := rest[:len(rest)-2*secretBytes-1], rest[len(rest)-2*secretBytes:]
	if rest[len(rest)-2*secretBytes-1] != '_' || schemas.ValidateName("token name", name) != nil {
		return "", false
	}
	if _, err := hex.DecodeString(hexPart); err != nil || strings.ToLower(hexPart) != hexPart {
		return "", false
	}
	return name, true
}
