package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/runs"
	"github.com/agnes-ai/connector-kit/schemas"
)

// syncOverAPI asks a sync API for a run of source (an operator token) and
// follows its record until it ends: the same outcome and exit code as a
// sync on the bus, for a client that reaches only the API.
func syncOverAPI(ctx context.Context, api *tokenAPI, source, tables string, full bool, timeout time.Duration, stdout io.Writer) error {
	if err := schemas.ValidateName("source", source); err != nil {
		return err
	}
	body := map[string]any{"source": source, "full_refresh": full}
	if tables != "" {
		var ts []string
		for _, t := range strings.Split(tables, ",") {
			ts = append(ts, strings.TrimSpace(t))
		}
		body["tables"] = ts
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var trig struct {
		RunID string `json:"run_id"`
	}
	if _, err := api.call(ctx, "POST", "/api/sync/trigger", body, &trig); err != nil {
		return err
	}
	if schemas.ValidateRunID(trig.RunID) != nil {
		return fmt.Errorf("the API answered run id %s, not a UUID", schemas.Clip(trig.RunID))
	}
	fmt.Fprintf(stdout, "Syncing source %s (run %s) through the sync API at %s\n", source, trig.RunID, api.url)
	last := runs.Status("")
	for {
		var rec runs.Record
		_, err := api.call(ctx, "GET", "/api/sync/runs/"+trig.RunID, nil, &rec)
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("run %s: still %s after %s", trig.RunID, cmp.Or(string(last), "queued"), timeout)
		}
		if err == nil && rec.Status != last {
			last = rec.Status
			fmt.Fprintf(stdout, "  %s\n", last)
		}
		if err == nil && rec.EndedAt != nil {
			return apiSummary(stdout, rec)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// apiSummary prints an ended run's tables and outcome; a run that did not
// publish, or published with failed tables, exits 1.
func apiSummary(stdout io.Writer, rec runs.Record) error {
	failed := 0
	for _, t := range rec.Tables {
		fmt.Fprintf(stdout, "  %-30s %-7s %11s rows  %s\n", t.Name, t.Status, thousands(t.Rows), oneLine(redact.Terminal(t.Error), 100))
		if t.Status == schemas.StatusFailed {
			failed++
		}
	}
	if rec.Status != runs.Published {
		return fmt.Errorf("run %s %s: %s", rec.RunID, rec.Status, redact.Terminal(rec.Error))
	}
	fmt.Fprintf(stdout, "Published %s\n", rec.Path)
	if failed > 0 {
		return exitCode(1)
	}
	return nil
}
