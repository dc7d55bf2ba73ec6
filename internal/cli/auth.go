package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/internal/tokens"
	"github.com/agnes-ai/connector-kit/schemas"
)

const authUsage = `usage:
  da auth token create --name N --role viewer|operator|admin [--expires 30d|never] [--json]
  da auth token list [--json]
  da auth token revoke <name>
  da auth audit [--limit N] [--json]
On the bus as the NATS admin identity; or, with --api URL ($DA_API_URL), through a
da serve's sync API with an admin token from --token or $DA_TOKEN.
`

// runAuth manages the sync API's tokens on the bus (as the NATS admin
// identity) and shows the audit log.
func runAuth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) >= 2 && args[0] == "token" && args[1] == "create":
		return runTokenCreate(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "token" && args[1] == "list":
		return runTokenList(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "token" && args[1] == "revoke":
		return runTokenRevoke(ctx, args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "audit":
		return runAudit(ctx, args[1:], stdout, stderr)
	case len(args) == 1 && (args[0] == "-h" || args[0] == "help"):
		fmt.Fprint(stdout, authUsage)
		return nil
	}
	return usageError{errors.New(authUsage)}
}

// authCommand parses a token command's flags and reaches the tokens:
// on the bus the config names, as admin, or through a sync API.
type authCommand struct {
	fs     *flag.FlagSet
	c      commonFlags
	asJSON *bool
	api    apiFlags
}

func newAuthCommand(name string, stderr io.Writer) *authCommand {
	a := &authCommand{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	a.fs.SetOutput(stderr)
	a.c.register(a.fs)
	a.asJSON = a.fs.Bool("json", false, "print JSON")
	a.api.register(a.fs)
	return a
}

// open parses args, which must hold nargs positional arguments (else the
// usage error is usage), and opens the store, or names the API to go
// through (store nil); it returns the positional arguments and a closer.
func (a *authCommand) open(ctx context.Context, args []string, stderr io.Writer, nargs int, usage string) (*tokens.Store, *tokenAPI, []string, func(), error) {
	pos, err := parseArgs(a.fs, args)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if len(pos) != nargs {
		return nil, nil, nil, nil, usageError{errors.New(usage)}
	}
	if api, err := a.api.client(stderr); api != nil || err != nil {
		return nil, api, pos, func() {}, err
	}
	cfg, err := a.c.load()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	a.c.identity = natsbus.RoleAdmin
	log := newLogger(stderr, slog.LevelWarn)
	js, closeBus, _, err := connect(ctx, cfg, a.c, stack.Options{Roles: []string{stack.RoleNone}, Logger: log}, false)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	store, err := tokens.Open(ctx, js, log)
	if err != nil {
		closeBus()
		return nil, nil, nil, nil, err
	}
	return store, nil, pos, closeBus, nil
}

// Created is the answer to a token's creation: the only time the token
// is shown.
type Created struct {
	Name      string      `json:"name"`
	Role      tokens.Role `json:"role"`
	Token     string      `json:"token"`
	ExpiresAt *time.Time  `json:"expires_at"`
}

func runTokenCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAuthCommand("auth token create", stderr)
	name := a.fs.String("name", "", "the token's name (letters, digits, _): how lists, audits and revoke name it")
	role := a.fs.String("role", "", "viewer (read), operator (+ trigger and cancel) or admin (+ tokens)")
	expires := a.fs.String("expires", "90d", "lifetime: 30d, 2w, 12h, or never")
	store, api, _, closeBus, err := a.open(ctx, args, stderr, 0, "usage: da auth token create --name N --role viewer|operator|admin [--expires 30d]")
	if err != nil {
		return err
	}
	defer closeBus()
	r, err := tokens.ParseRole(*role)
	if err != nil {
		return usageError{fmt.Errorf("--role: %w", err)}
	}
	ttl, err := tokens.ParseExpiry(*expires)
	if err != nil {
		return usageError{fmt.Errorf("--expires: %w", err)}
	}
	var c Created
	if api != nil {
		_, err = api.call(ctx, "POST", "/api/tokens", map[string]string{"name": *name, "role": string(r), "expires_in": *expires}, &c)
	} else {
		var t tokens.Token
		c.Token, t, err = store.Create(ctx, *name, r, ttl, "cli", "")
		c.Name, c.Role, c.ExpiresAt = t.Name, t.Role, t.ExpiresAt
	}
	if err != nil {
		return err
	}
	if *a.asJSON {
		return json.NewEncoder(stdout).Encode(c)
	}
	exp := "never expires"
	if c.ExpiresAt != nil {
		exp = "expires " + c.ExpiresAt.Format(time.RFC3339)
	}
	fmt.Fprintf(stderr, "Created token %s (%s, %s). It is shown only now and stored only as a hash; send it as \"Authorization: Bearer <token>\":\n", c.Name, c.Role, exp)
	fmt.Fprintln(stdout, c.Token)
	return nil
}

func runTokenList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAuthCommand("auth token list", stderr)
	store, api, _, closeBus, err := a.open(ctx, args, stderr, 0, "usage: da auth token list [--json]")
	if err != nil {
		return err
	}
	defer closeBus()
	var list []tokens.Token
	if api != nil {
		_, err = api.call(ctx, "GET", "/api/tokens", nil, &list)
	} else {
		list, err = store.List(ctx)
	}
	if err != nil {
		return err
	}
	if *a.asJSON {
		if list == nil {
			list = []tokens.Token{}
		}
		return json.NewEncoder(stdout).Encode(list)
	}
	fmt.Fprintf(stdout, "%-24s %-9s %-20s %-20s %-20s %s\n", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "FROM")
	for _, t := range list {
		fmt.Fprintf(stdout, "%-24s %-9s %-20s %-20s %-20s %s\n", t.Name, t.Role, t.CreatedAt.Format(time.DateTime),
			timeOr(t.ExpiresAt, "never"), timeOr(t.LastUsedAt, "never"), cmp.Or(t.LastUsedIP, "-"))
	}
	return nil
}

func runTokenRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAuthCommand("auth token revoke", stderr)
	store, api, pos, closeBus, err := a.open(ctx, args, stderr, 1, "usage: da auth token revoke <name>")
	if err != nil {
		return err
	}
	defer closeBus()
	if api != nil {
		if err := schemas.ValidateName("token name", pos[0]); err != nil {
			return err
		}
		_, err = api.call(ctx, "DELETE", "/api/tokens/"+pos[0], nil, nil)
	} else {
		err = store.Revoke(ctx, pos[0], "cli", "")
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Revoked token %s: every API refuses it from now on.\n", pos[0])
	return nil
}

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAuthCommand("auth audit", stderr)
	limit := a.fs.Int("limit", 100, fmt.Sprintf("the last this many entries (up to %d)", tokens.MaxList))
	store, api, _, closeBus, err := a.open(ctx, args, stderr, 0, "usage: da auth audit [--limit N] [--json]")
	if err != nil {
		return err
	}
	defer closeBus()
	var list []tokens.Entry
	if api != nil {
		_, err = api.call(ctx, "GET", fmt.Sprintf("/api/audit?limit=%d", *limit), nil, &list)
	} else {
		list, err = store.Audit().List(ctx, *limit)
	}
	if err != nil {
		return err
	}
	if *a.asJSON {
		if list == nil {
			list = []tokens.Entry{}
		}
		return json.NewEncoder(stdout).Encode(list)
	}
	fmt.Fprintf(stdout, "%-20s %-14s %-24s %-9s %-24s %s\n", "TIME", "ACTION", "TOKEN", "ROLE", "BY", "FROM")
	for _, e := range list {
		fmt.Fprintf(stdout, "%-20s %-14s %-24s %-9s %-24s %s\n", e.At.Format(time.DateTime), e.Action, e.Token, e.Role, cmp.Or(e.By, "-"), cmp.Or(e.IP, "-"))
	}
	return nil
}

func timeOr(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.UTC().Format(time.DateTime)
}
