package natsbus

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// An embedded server that listens on a port refuses anonymous clients: it
// knows one NATS identity (an nkey user) per role, whose seeds it keeps in
// <store>/creds/<role>.nk (0600, in a 0700 folder), made at its first
// start. A client proves an identity with the seed file: --nats-creds FILE
// or $DA_NATS_CREDS, or the file in a data dir it shares with the server.
// Nkeys keep no secret on the server (only public keys) and put none on
// the wire. See docs/security-bus.md.

// Identity roles.
const (
	RoleAdmin     = "admin"
	RoleProducer  = "producer"
	RoleWriter    = "writer"
	RoleFinalizer = "finalizer"
	RoleGateway   = "gateway"
	RoleCLI       = "cli"
	RoleAPI       = "api"
)

// IdentityRoles are the identities an embedded server knows.
var IdentityRoles = []string{RoleAdmin, RoleProducer, RoleWriter, RoleFinalizer, RoleGateway, RoleCLI, RoleAPI}

// CredsFile is the seed file of role's identity in a store folder.
func CredsFile(storeDir, role string) string {
	return filepath.Join(storeDir, "creds", role+".nk")
}

// ensureIdentities makes (once) and reads the identities of a store
// folder; it returns the public key of each role.
func ensureIdentities(storeDir string) (map[string]string, error) {
	return EnsureIdentities(func(role string) string { return CredsFile(storeDir, role) })
}

// EnsureIdentities makes the seed file of each role that has none, at
// seedPath(role) (0600, its folder 0700), and returns each role's public
// key, reading the files already there.
func EnsureIdentities(seedPath func(role string) string) (map[string]string, error) {
	pubs := map[string]string{}
	for _, role := range IdentityRoles {
		pub, err := ensureSeed(seedPath(role))
		if err != nil {
			return nil, fmt.Errorf("nats credentials: %w", err)
		}
		pubs[role] = pub
	}
	return pubs, nil
}

// ensureSeed makes the nkey user seed file at path unless there is one,
// and returns its public key.
func ensureSeed(path string) (string, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", err
	}
	seed, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		kp, kerr := nkeys.CreateUser()
		if kerr != nil {
			return "", kerr
		}
		if seed, kerr = kp.Seed(); kerr != nil {
			return "", kerr
		}
		// O_EXCL: two processes starting at once do not overwrite each
		// other's file (the store lock makes that rare anyway).
		f, ferr := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if ferr != nil {
			return "", ferr
		}
		_, werr := f.Write(append(seed, '\n'))
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return "", fmt.Errorf("write %s: %w", path, werr)
		}
	} else if err != nil {
		return "", err
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return "", fmt.Errorf("%s is not an nkey user seed: %w", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !strings.HasPrefix(pub, "U") {
		return "", fmt.Errorf("%s is not an nkey user seed", path)
	}
	return pub, nil
}

// nkeyUsers are the server's users for the identities.
func nkeyUsers(pubs map[string]string) []*server.NkeyUser {
	var users []*server.NkeyUser
	for _, role := range IdentityRoles {
		users = append(users, &server.NkeyUser{Nkey: pubs[role], Permissions: Permissions(role)})
	}
	return users
}

// CredsOption is the client option proving the identity in seed file path.
func CredsOption(path string) (nats.Option, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("nats credentials %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("nats credentials %s: readable by others (mode %o); chmod 600 it", path, st.Mode().Perm())
	}
	opt, err := nats.NkeyOptionFromSeed(path)
	if err != nil {
		return nil, fmt.Errorf("nats credentials %s: %w", path, err)
	}
	return opt, nil
}

// Permissions are the subjects an identity may use: its role's streams,
// consumers and buckets, and nothing else; nil (everything) for admin.
// JetStream is used through its API subjects, so they are allowed stream
// by stream: reading a stream (consumers, gets, acks) is a grant of its
// own, apart from asking for its info.
func Permissions(role string) *server.Permissions {
	var pub []string
	read := func(streams ...string) {
		for _, st := range streams {
			pub = append(pub, "$JS.API.STREAM.INFO."+st,
				"$JS.API.CONSUMER.CREATE."+st, "$JS.API.CONSUMER.CREATE."+st+".>", "$JS.API.CONSUMER.DURABLE.CREATE."+st+".>",
				"$JS.API.CONSUMER.INFO."+st+".>", "$JS.API.CONSUMER.DELETE."+st+".>", "$JS.API.CONSUMER.MSG.NEXT."+st+".>",
				"$JS.API.DIRECT.GET."+st, "$JS.API.DIRECT.GET."+st+".>", "$JS.API.STREAM.MSG.GET."+st,
				"$JS.ACK."+st+".>", "$JS.FC."+st+".>")
		}
	}
	info := func(streams ...string) {
		for _, st := range streams {
			pub = append(pub, "$JS.API.STREAM.INFO."+st)
		}
	}
	kv := func(buckets ...string) {
		for _, b := range buckets {
			read("KV_" + b)
			pub = append(pub, "$KV."+b+".>")
		}
	}
	kvRead := func(buckets ...string) {
		for _, b := range buckets {
			read("KV_" + b)
		}
	}
	switch role {
	case RoleAdmin:
		return nil
	case RoleProducer:
		// Reads sync requests, webhooks and schedule ticks; publishes data,
		// events, dead letters and (the scheduler) sync requests.
		pub = append(pub, "agnes.data.>", "agnes.events.>", "agnes.stream.>", "agnes.dlq.>", "agnes.sync.>")
		read(schemas.SyncStream, schemas.HookStream, schemas.ScheduleStream, schemas.EventStream)
		info(schemas.DataStream, schemas.StreamEventStream, schemas.DeadLetterStream)
		kv(schemas.LockBucket, schemas.RunsBucket, schemas.ProducerBucket)
		kvRead(schemas.StateBucket)
	case RoleWriter:
		pub = append(pub, "agnes.events.>", "agnes.stream.>", "agnes.dlq.>")
		read(schemas.DataStream, schemas.EventStream)
		info(schemas.StreamEventStream, schemas.DeadLetterStream)
		kv(schemas.WriterBucket)
	case RoleFinalizer:
		pub = append(pub, "agnes.events.>", "agnes.stream.>")
		read(schemas.EventStream, schemas.StreamEventStream)
		kv(schemas.StateBucket, schemas.LockBucket, schemas.RunsBucket)
		kvRead(schemas.ProducerBucket)
	case RoleGateway:
		pub = append(pub, "agnes.hooks.>")
		info(schemas.HookStream)
	case RoleCLI:
		// Asks for runs and cancels them (an event); reads events, run
		// records, dead letters and schedules.
		pub = append(pub, "agnes.sync.>", "agnes.events.>")
		read(schemas.EventStream, schemas.DeadLetterStream, schemas.ScheduleStream)
		info(schemas.SyncStream)
		kv(schemas.RunsBucket, schemas.LockBucket)
		kvRead(schemas.ProducerBucket)
	case RoleAPI:
		// The sync API: what the CLI may, plus the tokens and the audit.
		pub = append(pub, "agnes.sync.>", "agnes.events.>", "agnes.audit.>")
		read(schemas.EventStream, schemas.DeadLetterStream, schemas.ScheduleStream, schemas.AuditStream)
		info(schemas.SyncStream)
		kv(schemas.RunsBucket, schemas.LockBucket, schemas.TokenBucket)
		kvRead(schemas.ProducerBucket)
	default:
		pub = nil
	}
	pub = append(pub, "$JS.API.INFO")
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
}

// ClientIdentity is how a client proves itself to a server and checks
// the server: an nkey seed file, and the CA file of a server with TLS.
type ClientIdentity struct {
	Creds string
	CA    string
}

// Options are the connect options of id.
func (id ClientIdentity) Options() ([]nats.Option, error) {
	var opts []nats.Option
	if id.Creds != "" {
		o, err := CredsOption(id.Creds)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	if id.CA != "" {
		if _, err := os.Stat(id.CA); err != nil {
			return nil, fmt.Errorf("nats CA: %w", err)
		}
		opts = append(opts, nats.RootCAs(id.CA))
	}
	return opts, nil
}
