// Package finalizer publishes extracts. It follows the run events, decides
// when every batch of every table of a run is written, assembles each table's
// staged parts into data/<table>.parquet, builds extract.duckdb under a
// temporary name and renames it over the live file, then announces
// extract_published. It is the only service that links DuckDB.
package finalizer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agnes-ai/connector-kit/finalizer/duck"
	"github.com/agnes-ai/connector-kit/internal/errclass"
	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go/jetstream"
)

// FinalizeRetryBudget is how long a run whose finalization keeps failing is
// retried before it is reported failed.
const FinalizeRetryBudget = 2 * time.Minute

// Options configure a Finalizer.
type Options struct {
	JS           jetstream.JetStream
	DataDir      string
	RowGroupRows int64
	Mem          memory.Allocator
	Logger       *slog.Logger
	// Partitioned tables: compaction thresholds and how long replaced files
	// stay for readers of an older extract.
	CompactMinFiles   int
	CompactSmallBytes int64
	RetireGrace       time.Duration
}

// Finalizer follows run events and publishes extracts. Two followers (run
// events, stream events) route every event to the owner of its source, the
// one goroutine that decides for that source (owner.go).
type Finalizer struct {
	opts   Options
	log    *slog.Logger
	layout schemas.Layout
	// Buckets, opened at start.
	state, lockKV jetstream.KeyValue

	// caughtUp counts the event streams replayed (CaughtUp).
	caughtUp atomic.Int32

	// ownersMu guards owners: the two followers add to it, Busy reads it.
	ownersMu sync.Mutex
	owners   map[string]*owner
	ownerCtx context.Context
	ownerWG  sync.WaitGroup
	// runsLive, streamLive: that replay caught up; an owner started later
	// is live from its start.
	runsLive, streamLive bool

	duckOnce sync.Once
	duckDB   *sql.DB
	duckErr  error
}

// runState is what the owner knows of one run, folded from its events.
type runState struct {
	source    string
	tables    map[string]*tableState
	done      *schemas.Event
	failed    bool
	published bool
	retry     retry
}

// placesPartitions reports whether finalizing the run places parts into
// monthly partitions (a table of it is partitioned).
func (r *runState) placesPartitions() bool {
	for _, t := range r.tables {
		if t.done != nil && t.done.WriteMode == schemas.WritePartitioned {
			return true
		}
	}
	return false
}

// ready reports whether the run is to be finalized now: reported done,
// neither published nor failed, and every batch it announced is written.
func (r *runState) ready() bool {
	return !r.published && !r.failed && r.done != nil && r.complete()
}

type tableState struct {
	done        *schemas.Event
	parts       map[string]schemas.Event
	batchFailed map[int]string // by attempt
}

// failure is why the table's batches of its done attempt cannot publish.
func (t *tableState) failure() string {
	if t.done == nil {
		return ""
	}
	return t.batchFailed[t.done.Attempt]
}

// doneParts are the parts written for the table's done attempt.
func (t *tableState) doneParts() map[string]schemas.Event {
	out := map[string]schemas.Event{}
	for n, p := range t.parts {
		if t.done != nil && p.Attempt == t.done.Attempt {
			out[n] = p
		}
	}
	return out
}

// Validate reports options a finalizer cannot run with.
func (o Options) Validate() error {
	var errs []error
	if o.JS == nil {
		errs = append(errs, errors.New("no JetStream client"))
	}
	if o.DataDir == "" {
		errs = append(errs, errors.New("no data dir"))
	}
	if o.RowGroupRows < 0 || o.CompactMinFiles < 0 || o.CompactSmallBytes < 0 || o.RetireGrace < 0 {
		errs = append(errs, errors.New("negative size, count or duration"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("finalizer options: %w", err)
	}
	return nil
}

// New returns a Finalizer; Run starts it.
func New(opts Options) (*Finalizer, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.RowGroupRows <= 0 {
		opts.RowGroupRows = parquetfile.DefaultRowGroupRows
	}
	if opts.Mem == nil {
		opts.Mem = memory.DefaultAllocator
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.CompactMinFiles <= 1 {
		opts.CompactMinFiles = DefaultCompactMinFiles
	}
	if opts.CompactSmallBytes <= 0 {
		opts.CompactSmallBytes = DefaultCompactSmallBytes
	}
	if opts.RetireGrace <= 0 {
		opts.RetireGrace = DefaultRetireGrace
	}
	layout, err := schemas.NewLayout(opts.DataDir)
	if err != nil {
		return nil, fmt.Errorf("finalizer: %w", err)
	}
	return &Finalizer{opts: opts, log: opts.Logger.With("service", "finalizer"), layout: layout,
		owners: map[string]*owner{}}, nil
}

// Run replays the event stream from its start, then follows it until ctx
// ends, finalizing every run whose data is complete and whose extract is not
// yet published. It waits for finalizations in progress before returning.
func (f *Finalizer) Run(ctx context.Context) error {
	if n, err := parquetfile.CleanTemps(f.layout.Extracts()); err != nil {
		f.log.Warn("clean temporary files", "err", err)
	} else if n > 0 {
		f.log.Info("removed temporary files left by a crash", "count", n)
	}
	var err error
	if f.state, err = natsbus.KeyValue(ctx, f.opts.JS, schemas.StateBucket); err != nil {
		return err
	}
	if f.lockKV, err = natsbus.KeyValue(ctx, f.opts.JS, schemas.LockBucket); err != nil {
		return err
	}
	f.log.Info("finalizer started", "data_dir", f.layout.Root())
	octx, stopOwners := context.WithCancel(ctx)
	f.ownersMu.Lock()
	f.ownerCtx = octx
	f.ownersMu.Unlock()
	defer func() {
		stopOwners()
		f.ownerWG.Wait()
		if f.duckDB != nil {
			f.duckDB.Close()
		}
		f.log.Info("finalizer stopped")
	}()
	// Streamed parts are followed on their own stream.
	streamErr := make(chan error, 1)
	sctx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	go func() {
		streamErr <- f.follow(sctx, schemas.StreamEventStream, "agnes.stream.>", true)
	}()
	err = f.follow(ctx, schemas.EventStream, "agnes.events.>", false)
	stopStream()
	serr := <-streamErr
	if err == nil && ctx.Err() == nil {
		err = serr
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// owner returns the owner of source, starting it on first use.
func (f *Finalizer) owner(source string) *owner {
	f.ownersMu.Lock()
	defer f.ownersMu.Unlock()
	o := f.owners[source]
	if o == nil {
		o = newOwner(f, source)
		o.runsLive, o.streamLive = f.runsLive, f.streamLive
		f.owners[source] = o
		if f.ownerCtx != nil {
			f.ownerWG.Add(1)
			go func() {
				defer f.ownerWG.Done()
				o.loop(f.ownerCtx)
			}()
		}
	}
	return o
}

// follow replays one event stream and follows it, routing each event to
// its source's owner; once the replay caught up, every owner (and one for
// every source folder on disk, for what it left in staging) is told so.
// A run may look complete in the history before its extract_published event
// is read, so owners act only after that.
func (f *Finalizer) follow(ctx context.Context, stream, filter string, streamed bool) error {
	return f.replayThenFollow(ctx, stream, filter,
		func(ev schemas.Event) {
			switch {
			case streamed:
				f.owner(ev.Source).inbox.put(message{stream: &ev})
			case ev.RunID != schemas.StreamRun:
				f.owner(ev.Source).inbox.put(message{run: &ev})
			}
		},
		func() {
			for _, o := range f.allOwners(streamed) {
				o.inbox.put(message{runsCaughtUp: !streamed, streamCaughtUp: streamed})
			}
			f.caughtUp.Add(1)
		})
}

// CaughtUp reports whether the finalizer has replayed both event streams
// (what was there when it started): until then it has not yet acted on
// runs that ended while it was away.
func (f *Finalizer) CaughtUp() bool { return f.caughtUp.Load() >= 2 }

// allOwners starts an owner for every source folder on disk, marks the
// replay of the run or the stream events caught up, and returns the owners
// that were there before (they are to be told).
func (f *Finalizer) allOwners(streamed bool) []*owner {
	dirs, _ := filepath.Glob(filepath.Join(f.layout.Extracts(), "*"))
	for _, d := range dirs {
		if st, err := os.Stat(d); err == nil && st.IsDir() && schemas.ValidateName("source", filepath.Base(d)) == nil {
			f.owner(filepath.Base(d))
		}
	}
	f.ownersMu.Lock()
	defer f.ownersMu.Unlock()
	if streamed {
		f.streamLive = true
	} else {
		f.runsLive = true
	}
	out := make([]*owner, 0, len(f.owners))
	for _, o := range f.owners {
		out = append(out, o)
	}
	return out
}

// Busy reports whether streamed parts wait to be published, a compaction
// runs or an owner has events to fold: tests wait for it before checking
// that nothing temporary is left.
func (f *Finalizer) Busy() bool {
	f.ownersMu.Lock()
	defer f.ownersMu.Unlock()
	for _, o := range f.owners {
		if o.busy.Load() || !o.inbox.empty() {
			return true
		}
	}
	return false
}

// announce publishes an event the finalizer decided and reports whether
// the bus took it, retrying until it does (natsbus.Announce). A finalizer
// stopped first leaves the run to the next one, which replays it and
// announces again.
func (f *Finalizer) announce(ctx context.Context, ev schemas.Event) bool {
	return natsbus.Announce(ctx, f.opts.JS, f.log, ev)
}

// replayThenFollow reads stream from its start. Every event goes to apply;
// caughtUp runs once the events that were there at the start are read (at
// once when there were none).
func (f *Finalizer) replayThenFollow(ctx context.Context, stream, filter string, apply func(schemas.Event), caughtUp func()) error {
	s, err := f.opts.JS.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("%s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", stream, err)
	}
	replayEnd := info.State.LastSeq
	f.log.Info("replaying events", "stream", stream, "events", replayEnd)
	replaying := replayEnd > 0
	if !replaying {
		caughtUp()
	}
	err = natsbus.Follow(ctx, f.log, f.opts.JS, stream, filter, 0, func(msg jetstream.Msg) bool {
		ev, err := schemas.DecodeEvent(msg.Data())
		if err == nil {
			err = schemas.CheckEventSubject(msg.Subject(), ev)
		}
		if err != nil {
			metrics.MalformedInput.WithLabelValues("event").Inc()
			f.log.Warn("skipping malformed event", "subject", msg.Subject(), "err", err)
		} else {
			apply(ev)
		}
		if replaying {
			if md, err := msg.Metadata(); err == nil && md.Sequence.Stream >= replayEnd {
				replaying = false
				caughtUp()
			}
		}
		return true
	})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("follow %s: %w", stream, err)
	}
	return nil
}

// cleanPublished removes staging folders of runs whose extract is published
// (left when a finalizer stopped between publishing and cleaning up).
func (o *owner) cleanPublished() {
	for id, r := range o.runs {
		if r.published {
			o.f.dropStaging(o.source, id)
		}
	}
}

// OrphanAge is how old the staging folder of a run no event mentions must
// be before it is removed: parts of a batch that named a run that never
// existed, or whose events expired.
const OrphanAge = time.Hour

// cleanOrphans removes staging folders of runs that no event of the
// history mentions and that nothing wrote to for OrphanAge. Folders whose
// name is not a run id are left alone (and logged): no writer makes them.
func (o *owner) cleanOrphans(now time.Time) {
	staging, err := o.f.layout.Staging(o.source)
	if err != nil {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(staging, "*"))
	for _, d := range dirs {
		run := filepath.Base(d)
		if schemas.ValidateRunID(run) != nil {
			o.f.log.Warn("staging folder is not named after a run; left alone", "path", d)
			continue
		}
		if run == schemas.StreamRun || o.runs[run] != nil || newestChange(d).After(now.Add(-OrphanAge)) {
			continue
		}
		o.f.log.Warn("removing the staging of a run no event mentions", "source", o.source, "run", run)
		o.f.dropStaging(o.source, run)
	}
}

// cleanAbandoned removes the staging of runs that stopped without an end:
// neither published nor failed, their source's lock no longer theirs (the
// producer died and its lock expired, and no retry took it again), and
// nothing written to their staging for OrphanAge. A retry that comes later
// writes its parts again under its own attempt.
func (o *owner) cleanAbandoned(ctx context.Context, now time.Time) {
	f := o.f
	for id, r := range o.runs {
		if r.published || r.failed || id == schemas.StreamRun {
			continue
		}
		dir, err := f.layout.RunStaging(o.source, id)
		if err != nil {
			continue
		}
		if _, err := os.Stat(dir); err != nil || newestChange(dir).After(now.Add(-OrphanAge)) {
			continue
		}
		holder, err := natsbus.LockHolder(ctx, f.lockKV, o.source)
		if err != nil {
			f.log.Warn("not cleaning abandoned staging: the lock cannot be read", "source", o.source, "err", err)
			return
		}
		if holder == id {
			continue
		}
		f.log.Warn("removing the staging of a run that stopped without finishing", "source", o.source, "run", id,
			"idle_for", OrphanAge.String())
		f.dropStaging(o.source, id)
	}
}

// SweepEvery is how often an owner removes staging no run will use: of
// published runs (left by a stop between publishing and cleaning up), of
// runs no event mentions, and of abandoned runs.
const SweepEvery = 10 * time.Minute

// sweep does the cleanups SweepEvery describes.
func (o *owner) sweep(ctx context.Context, now time.Time) {
	o.cleanPublished()
	o.cleanOrphans(now)
	o.cleanAbandoned(ctx, now)
}

// newestChange is the latest modification time of dir or anything in it.
func newestChange(dir string) time.Time {
	var t time.Time
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil && info.ModTime().After(t) {
			t = info.ModTime()
		}
		return nil
	})
	return t
}

// dropStaging removes a run's staging folder. The path comes from the
// layout, which refuses anything that is not a run id.
func (f *Finalizer) dropStaging(source, run string) {
	if run == schemas.StreamRun {
		return
	}
	dir, err := f.layout.RunStaging(source, run)
	if err != nil {
		f.log.Warn("not removing staging", "source", source, "run", run, "err", err)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		f.log.Warn("remove staging", "run", run, "err", err)
	}
}

// applyRun folds one event into the state of its run.
func (o *owner) applyRun(ev schemas.Event) {
	f := o.f
	r := o.runs[ev.RunID]
	if r == nil {
		r = &runState{source: ev.Source, tables: map[string]*tableState{}}
		r.retry.backoff = natsbus.Backoff{Min: time.Second, Max: 15 * time.Second}
		o.runs[ev.RunID] = r
	}
	table := func() *tableState {
		t := r.tables[ev.Table]
		if t == nil {
			t = &tableState{parts: map[string]schemas.Event{}}
			r.tables[ev.Table] = t
		}
		return t
	}
	switch ev.Type {
	case schemas.EventTableDone:
		// A retried run reports its tables again; the last attempt wins.
		if t := table(); t.done == nil || ev.Attempt >= t.done.Attempt {
			e := ev
			t.done = &e
		}
	case schemas.EventBatchWritten:
		if r.published {
			// A late duplicate after the run was published: its part is not needed.
			if pn, err := schemas.ParsePartName(ev.Part); err == nil {
				if p, err := f.layout.Part(ev.Source, ev.RunID, ev.Table, pn); err == nil {
					os.Remove(p)
				}
			}
			return
		}
		table().parts[ev.Part] = ev
	case schemas.EventBatchFailed:
		t := table()
		if t.batchFailed == nil {
			t.batchFailed = map[int]string{}
		}
		if t.batchFailed[ev.Attempt] == "" {
			t.batchFailed[ev.Attempt] = fmt.Sprintf("batch %d could not be written: %s", ev.Seq, ev.Error)
		}
	case schemas.EventRunDone:
		if r.done == nil || ev.Attempt >= r.done.Attempt {
			e := ev
			r.done = &e
		}
	case schemas.EventRunFailed, schemas.EventRunRejected, schemas.EventRunCancelled, schemas.EventRunAbandoned:
		if ev.Type == schemas.EventRunAbandoned && (r.done != nil || r.published) {
			// Its producer had read everything before it went away: the
			// run is the finalizer's, and publishing it is what readers
			// want.
			f.log.Warn("run reported abandoned after it was read; publishing it", "source", ev.Source, "run", ev.RunID)
			return
		}
		// Nothing of this run will be published: drop what it staged.
		r.failed = true
		f.dropStaging(ev.Source, ev.RunID)
		if (ev.Type == schemas.EventRunCancelled || ev.Type == schemas.EventRunAbandoned) && !r.published {
			// The producer may be done already (a cancelled run was
			// writing), or dead (abandoned): the source is free for the
			// next sync at once.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			f.release(ctx, ev.Source, ev.RunID)
			cancel()
		}
	case schemas.EventExtractPublished:
		r.published = true
		r.tables = map[string]*tableState{}
	}
}

// complete reports whether, for every table the run reported done and
// stores, the staged parts hold every seq of its done attempt.
func (r *runState) complete() bool {
	for _, res := range r.done.Results {
		if res.Status != schemas.StatusDone || !schemas.Stored(res.QueryMode) {
			continue
		}
		t := r.tables[res.Table]
		if t == nil || t.done == nil {
			return false
		}
		if t.failure() != "" || t.done.Batches == 0 {
			continue
		}
		if cover(partsOf("", t.doneParts()), t.done.Batches) == nil {
			return false
		}
	}
	return true
}

// staging is the folder of a table's parts in a run; the names come from
// validated events, so an error here is a programming error and yields a
// path under a folder that cannot exist.
func (f *Finalizer) staging(source, run, table string) string {
	dir, err := f.layout.TableStaging(source, run, table)
	if err != nil {
		f.log.Error("staging path refused", "source", source, "run", run, "table", table, "err", err)
		return filepath.Join(f.layout.Extracts(), ".refused")
	}
	return dir
}

// release frees the source's sync lock held by run.
func (f *Finalizer) release(ctx context.Context, source, runID string) {
	err := natsbus.Retry(ctx, func() error { return natsbus.ReleaseRun(ctx, f.lockKV, source, runID) })
	if err != nil {
		f.log.Warn("release source lock", "source", source, "run", runID, "err", err)
	}
}

// tableStep is what one table of a run becomes in the extract.
type tableStep int

const (
	// stepReport: reported as it is (failed or skipped by the producer, or
	// refused here); nothing is published for it.
	stepReport tableStep = iota
	// stepRemote: a remote view, a catalog entry only.
	stepRemote
	// stepPartitioned: the parts move into monthly partitions.
	stepPartitioned
	// stepVersion: a new immutable version file of a batch table.
	stepVersion
)

// tablePlan is the decision for one table of a run.
type tablePlan struct {
	step tableStep
	res  schemas.TableResult
	t    *tableState
	// version is the stepVersion file, relative to the data folder.
	version string
}

// planRun decides from the run's state alone what each table it reported
// becomes; the decisions that need the bus or the disk (the cursor check,
// the assembly) are the apply step's.
func planRun(runID string, r *runState) []tablePlan {
	plans := make([]tablePlan, 0, len(r.done.Results))
	for _, res := range r.done.Results {
		plans = append(plans, planTable(runID, res, r.tables[res.Table]))
	}
	return plans
}

func planTable(runID string, res schemas.TableResult, t *tableState) tablePlan {
	refuse := func(why string) tablePlan {
		res.Status, res.Error = schemas.StatusFailed, why
		return tablePlan{step: stepReport, res: res}
	}
	if err := schemas.ValidateName("table", res.Table); err != nil {
		return refuse(err.Error())
	}
	switch {
	case res.Status != schemas.StatusDone:
		return tablePlan{step: stepReport, res: res}
	case res.QueryMode == schemas.ModeRemote:
		return tablePlan{step: stepRemote, res: res, t: t}
	case t == nil || t.done == nil:
		return refuse("no table_done event for a table the run reported done")
	case t.failure() != "":
		return refuse(t.failure())
	}
	res.SchemaChanges, res.WriteMode = t.done.SchemaChanges, t.done.WriteMode
	if t.done.WriteMode == schemas.WritePartitioned {
		if len(t.done.PrimaryKey) != 1 {
			return refuse("a partitioned table names no key column")
		}
		return tablePlan{step: stepPartitioned, res: res, t: t}
	}
	// Every published version is a file of its own that no later publish
	// modifies: readers of an older extract keep reading theirs.
	version, err := schemas.VersionRel(res.Table, runID)
	if err != nil {
		return refuse(err.Error())
	}
	return tablePlan{step: stepVersion, res: res, t: t, version: version}
}

// publication is one finalization in progress: the catalog it edits and
// what it has staged to publish.
type publication struct {
	runID, source, dir, dataDir string
	now                         time.Time
	cat                         *catalog
	// moves are assembled files under temporary names; partMoves the parts
	// of partitioned tables going into their partitions (unlike assembled
	// files they are not removed when finalizing fails).
	moves, partMoves []move
	parted           []partitionedTable
	partedIdx        map[string]int
	commits          []*schemas.Event
}

// finalize assembles the run's tables, builds and swaps the extract and
// returns the extract_published event to announce.
func (f *Finalizer) finalize(ctx context.Context, runID string, r *runState) (schemas.Event, error) {
	pub, err := f.openPublication(runID, r.source)
	if err != nil {
		return schemas.Event{}, err
	}
	defer func() {
		for _, m := range pub.moves {
			os.Remove(m.tmp)
		}
	}()
	results := make([]schemas.TableResult, 0, len(r.done.Results))
	for _, pl := range planRun(runID, r) {
		res, err := f.applyTable(ctx, pub, pl)
		if err != nil {
			return schemas.Event{}, err
		}
		if pl.step == stepPartitioned && res.Status == schemas.StatusDone {
			pub.partedIdx[res.Table] = len(results)
		}
		results = append(results, res)
	}
	if r.done.Remote != nil {
		pub.cat.Remote = []schemas.RemoteAttach{*r.done.Remote}
	}
	if err := f.publish(ctx, pub, results); err != nil {
		return schemas.Event{}, err
	}
	return schemas.Event{Type: schemas.EventExtractPublished, RunID: runID, Source: r.source, Results: results, Skipped: r.done.Skipped,
		Path: filepath.Join(pub.dir, schemas.ExtractFile)}, nil
}

// sourceDirs is the source's extract folder and its data folder, each
// refused if a symbolic link leads it (or the catalog's folder) out of the
// data dir.
func (f *Finalizer) sourceDirs(source string) (dir, dataDir string, err error) {
	if dir, err = f.layout.Source(source); err != nil {
		return "", "", err
	}
	if dataDir, err = f.layout.Data(source); err != nil {
		return "", "", err
	}
	if err = f.layout.Within(filepath.Join(dir, catalogFile)); err != nil {
		return "", "", err
	}
	return dir, dataDir, nil
}

func (f *Finalizer) openPublication(runID, source string) (*publication, error) {
	dir, dataDir, err := f.sourceDirs(source)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	cat, err := loadCatalog(dir)
	if err != nil {
		return nil, err
	}
	return &publication{runID: runID, source: source, dir: dir, dataDir: dataDir, now: time.Now().UTC(), cat: cat,
		partedIdx: map[string]int{}}, nil
}

// applyTable carries out one table's plan. A table that cannot be
// published fails alone (its result says why); the error is for what
// fails the whole finalization (the context ended, the catalog).
func (f *Finalizer) applyTable(ctx context.Context, pub *publication, pl tablePlan) (schemas.TableResult, error) {
	res := pl.res
	switch pl.step {
	case stepReport:
		return res, nil
	case stepRemote:
		ct := catalogTable{ExtractedAt: pub.now, QueryMode: schemas.ModeRemote, RunID: pub.runID}
		if t := pl.t; t != nil && t.done != nil {
			ct.Description, ct.Schema, ct.RemotePath, ct.RemoteQuery = t.done.Description, t.done.Schema, t.done.RemotePath, t.done.RemoteQuery
			if len(t.done.Schema) > 0 {
				// Recorded like a stored table's: the name rule prefers
				// published tables, remote ones included.
				pub.commits = append(pub.commits, t.done)
			}
		}
		pub.cat.Tables[res.Table] = ct
		return res, nil
	}
	var err error
	if err = f.checkCursor(ctx, f.state, pub.source, res.Table, pl.t.done); err == nil {
		if pl.step == stepPartitioned {
			err = f.stagePartitioned(ctx, pub, pl)
		} else {
			res, err = f.stageVersion(ctx, pub, pl)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if errors.Is(err, errCatalog) {
			return res, err
		}
		// Worth a retry (the bus, a busy file): the whole finalization is
		// tried again. Anything else fails this table alone, at once.
		if errclass.IsTransient(err) {
			return res, err
		}
		res.Status, res.Error = schemas.StatusFailed, err.Error()
		return res, nil
	}
	pub.commits = append(pub.commits, pl.t.done)
	return res, nil
}

// errCatalog marks a catalog entry that cannot be read: it fails the
// finalization, not one table.
var errCatalog = errors.New("catalog")

// stagePartitioned moves a partitioned table's parts towards their
// partitions; the catalog changes when the run publishes.
func (f *Finalizer) stagePartitioned(ctx context.Context, pub *publication, pl tablePlan) error {
	t := pl.t
	adds, mv, err := f.placeRun(ctx, pub.runID, pub.source, pl.res.Table, t, pub.dataDir)
	if err != nil {
		return err
	}
	pub.partMoves = append(pub.partMoves, mv...)
	pub.parted = append(pub.parted, partitionedTable{name: pl.res.Table, keyCol: t.done.PrimaryKey[0], description: t.done.Description,
		runID: pub.runID, schema: t.done.Schema, adds: adds, reconcile: t.done.Reconcile})
	return nil
}

// stageVersion assembles a batch table's new version under a temporary
// name (or finds it in place after a retried finalization) and records it
// in the catalog, retiring the version it replaces.
func (f *Finalizer) stageVersion(ctx context.Context, pub *publication, pl tablePlan) (schemas.TableResult, error) {
	res, t, cat := pl.res, pl.t, pub.cat
	final := filepath.Join(pub.dataDir, pl.version)
	if err := f.layout.Within(final); err != nil {
		return res, err
	}
	tmp := parquetfile.TempName(final)
	old, had := cat.Tables[res.Table]
	var prev string
	if had && schemas.Stored(old.QueryMode) && !old.Partitioned {
		p, err := old.file(pub.dataDir, res.Table)
		if err != nil {
			return res, fmt.Errorf("%w: %v", errCatalog, err)
		}
		prev = p
	}
	out, err := existingVersion(final)
	if errors.Is(err, os.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(final), 0o755); err == nil {
			out, err = f.assembleTable(ctx, pub.runID, pub.source, res.Table, t, tmp, prev)
		}
	}
	if err != nil {
		return res, err
	}
	if !out.applied {
		pub.moves = append(pub.moves, move{tmp, final})
	}
	res.SizeBytes, res.TotalRows = out.size, out.rows
	switch {
	case old.Partitioned:
		// The table switches layout: its partitions are retired.
		for _, p := range old.Files {
			cat.retire([]string{p.Path}, pub.now)
		}
	case had && old.Version != "" && old.Version != pl.version:
		cat.retire([]string{old.Version}, pub.now)
	}
	cat.Tables[res.Table] = catalogTable{Description: t.done.Description, Rows: out.rows, SizeBytes: out.size,
		ExtractedAt: pub.now, QueryMode: storedMode(res.QueryMode), RunID: pub.runID, Schema: t.done.Schema, Version: pl.version}
	return res, nil
}

// publish swaps the staged Parquet files in, then the extract that
// describes them, and only then advances the published schemas and cursors.
func (f *Finalizer) publish(ctx context.Context, pub *publication, results []schemas.TableResult) error {
	err := publishMoves(pub.moves)
	pub.moves = nil
	if err == nil {
		err = publishMoves(pub.partMoves)
	}
	if err != nil {
		return err
	}
	if err := parquetfile.SyncDir(pub.dataDir); err != nil {
		return err
	}
	failed := map[string]error{}
	for _, pt := range pub.parted {
		i := pub.partedIdx[pt.name]
		if err := f.applyPartitioned(ctx, pub.cat, pub.dataDir, pt, pub.now); err != nil {
			if ctx.Err() != nil || errclass.IsTransient(err) {
				return err
			}
			// The table fails alone; the files placed for it are read by
			// nothing and go with the retired ones.
			failed[pt.name] = err
			for _, a := range pt.adds {
				pub.cat.retire([]string{a.Path}, pub.now)
			}
			continue
		}
		ct := pub.cat.Tables[pt.name]
		results[i].SizeBytes, results[i].TotalRows = ct.SizeBytes, ct.Rows
	}
	left, err := f.publishCatalog(ctx, pub.dir, pub.cat, pub.now)
	if err != nil {
		return err
	}
	maps.Copy(failed, left)
	for i, res := range results {
		if why, ok := failed[res.Table]; ok && res.Status == schemas.StatusDone {
			results[i].Status, results[i].Error = schemas.StatusFailed, "publish: "+why.Error()
		}
	}
	for _, d := range pub.commits {
		if _, ok := failed[d.Table]; ok {
			continue // its schema and cursor stay those of what is published
		}
		if err := commitState(ctx, f.state, pub.source, d); err != nil {
			return err
		}
	}
	return nil
}

// publishCatalog builds and swaps the extract the catalog describes, then
// deletes files retired long enough ago and saves the catalog.
//
// A table the extract cannot hold (duck.Build left it out for a reason that
// repeats) goes back to the entry the live extract shows and the file is
// built again; a table whose earlier entry fails too, or that had none, is
// left out of the catalog. failed says which tables went back or out, and
// why; the error is for what fails the whole extract.
func (f *Finalizer) publishCatalog(ctx context.Context, dir string, cat *catalog, now time.Time) (failed map[string]error, err error) {
	dataDir := filepath.Join(dir, schemas.DataFolder)
	failed = map[string]error{}
	for {
		rows, err := catalogRows(dataDir, cat)
		if err != nil {
			return nil, err
		}
		left, err := duck.Build(ctx, dir, rows, cat.Remote)
		if err != nil {
			return nil, err
		}
		if len(left) == 0 {
			break
		}
		for n, why := range left {
			if _, seen := failed[n]; !seen {
				failed[n] = why
			}
			back := cat.restore(n, now)
			f.log.Error("table left out of the extract", "table", n, "err", why, "previous_version_kept", back)
		}
	}
	// data/ follows the extract: its links change only once the extract
	// that reads the same versions is live.
	if err := syncLinks(dataDir, cat); err != nil {
		return nil, err
	}
	f.deleteRetired(dataDir, cat, now)
	return failed, cat.save(dir)
}

// catalogRows describes every table of the catalog for duck.Build, in
// name order.
func catalogRows(dataDir string, cat *catalog) ([]duck.Table, error) {
	names := slices.Sorted(maps.Keys(cat.Tables))
	rows := make([]duck.Table, 0, len(names))
	for _, n := range names {
		ct := cat.Tables[n]
		mr := duck.Table{Table: n, Description: ct.Description, Rows: ct.Rows, SizeBytes: ct.SizeBytes, ExtractedAt: ct.ExtractedAt,
			QueryMode: ct.QueryMode, RemotePath: ct.RemotePath, RemoteQuery: ct.RemoteQuery}
		if len(ct.Schema) > 0 {
			mr.Schema, _ = schemas.DecodeSchema(ct.Schema)
		}
		switch {
		case ct.Partitioned:
			if len(ct.Files) == 0 {
				continue
			}
			mr.Files, mr.KeyColumn = absFiles(dataDir, ct.Files), ct.KeyColumn
		case schemas.Stored(ct.QueryMode):
			p, err := ct.file(dataDir, n)
			if err != nil {
				return nil, err
			}
			mr.Path = p
		}
		rows = append(rows, mr)
	}
	return rows, nil
}

// storedMode is the _meta query mode of a table kept in Parquet:
// materialized when the run said so, else local.
func storedMode(mode string) string {
	if mode == schemas.ModeMaterialized {
		return mode
	}
	return schemas.ModeLocal
}

// existingVersion describes a version file already in place: a retried
// finalization finds what it published before and keeps it untouched (a live
// extract may read it). It returns an error wrapping os.ErrNotExist when there
// is none.
func existingVersion(path string) (assembled, error) {
	st, err := os.Stat(path)
	if err != nil {
		return assembled{}, err
	}
	r, err := parquetfile.Open(path, 1, nil)
	if err != nil {
		return assembled{}, fmt.Errorf("read published version %s: %w", path, err)
	}
	defer r.Close()
	return assembled{size: st.Size(), rows: r.NumRows(), applied: true}, nil
}

// syncLinks points data/<table>.parquet at the newest version of every
// batch table, each replaced atomically (a new hard link renamed over the
// old one, so no version file is touched), and removes the link of a table
// that switched to monthly partitions.
func syncLinks(dataDir string, cat *catalog) error {
	changed := false
	for n, ct := range cat.Tables {
		link := filepath.Join(dataDir, n+".parquet")
		if ct.Partitioned {
			err := os.Remove(link)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove link %s: %w", link, err)
			}
			changed = changed || err == nil
			continue
		}
		if !schemas.Stored(ct.QueryMode) || ct.Version == "" {
			continue
		}
		version, err := ct.file(dataDir, n)
		if err != nil {
			return err
		}
		if sameFile(version, link) {
			continue
		}
		tmp := parquetfile.TempName(link)
		if err := os.Link(version, tmp); err != nil {
			return fmt.Errorf("link %s: %w", link, err)
		}
		if err := os.Rename(tmp, link); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("link %s: %w", link, err)
		}
		changed = true
	}
	if !changed {
		return nil // nothing moved: no folder sync on every streamed publish
	}
	return parquetfile.SyncDir(dataDir)
}

func sameFile(a, b string) bool {
	x, err := os.Stat(a)
	if err != nil {
		return false
	}
	y, err := os.Stat(b)
	return err == nil && os.SameFile(x, y)
}

// assembled says what assembleTable produced.
type assembled struct {
	size, rows int64
	// applied: the live file already holds this run's result (a retried
	// finalization of a merge or append); nothing is to be moved.
	applied bool
}

// assembleTable writes the table's new file at dst. A replace takes the run's
// batches; a merge or append also reads prev, the live file. Merge and append
// files record the run that made them, so a retried finalization does not
// apply the same rows twice.
func (f *Finalizer) assembleTable(ctx context.Context, runID, source, table string, t *tableState, dst, prev string) (assembled, error) {
	schema, err := schemas.DecodeSchema(t.done.Schema)
	if err != nil {
		return assembled{}, fmt.Errorf("table %s: %w", table, err)
	}
	mode := t.done.WriteMode
	if mode == "" || prev == "" {
		mode = schemas.WriteReplace
	}
	parts := partsOf(f.staging(source, runID, table), t.doneParts())
	owner := cover(parts, t.done.Batches)
	if owner == nil {
		return assembled{}, fmt.Errorf("table %s: not every batch is written", table)
	}
	var rows int64
	for seq, i := range owner {
		p := parts[i]
		for j, s := range p.seqs {
			if s == int64(seq) {
				rows += p.seqRows[j]
				break
			}
		}
	}
	if rows != t.done.Rows {
		return assembled{}, fmt.Errorf("table %s: written batches hold %d rows, the producer sent %d", table, rows, t.done.Rows)
	}
	if mode == schemas.WriteReplace {
		var size int64
		if t.done.Batches == 0 {
			size, err = writeEmpty(dst, schema, f.opts.Mem)
		} else {
			var how string
			size, how, err = assemble(ctx, dst, schema, parts, owner, f.opts.RowGroupRows, f.opts.Mem)
			f.log.Info("table assembled", "run", runID, "table", table, "parts", len(parts), "how", how)
		}
		if err != nil {
			return assembled{}, fmt.Errorf("table %s: %w", table, err)
		}
		return assembled{size: size, rows: rows}, nil
	}
	if done, n, size := appliedBy(prev, runID); done {
		return assembled{size: size, rows: n, applied: true}, nil
	}
	m := &merger{schema: schema, parts: parts, owner: owner, prev: prev, mode: mode, pk: t.done.PrimaryKey, run: runID,
		rowGroupRows: f.opts.RowGroupRows, mem: f.opts.Mem}
	out, err := m.combine(ctx, dst)
	if err != nil {
		return assembled{}, fmt.Errorf("table %s: %w", table, err)
	}
	return out, nil
}

// checkCursor refuses an incremental result whose cursor moved since the run
// read it: another run published first, and applying this one on top could
// duplicate rows.
func (f *Finalizer) checkCursor(ctx context.Context, kv jetstream.KeyValue, source, table string, d *schemas.Event) error {
	if d.Cursor == nil {
		return nil
	}
	e, err := kv.Get(ctx, schemas.CursorKey(source, table))
	var rev uint64
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return fmt.Errorf("read cursor of %s: %w", table, err)
	default:
		rev = e.Revision()
		if cur, err := schemas.DecodeCursor(e.Value()); err == nil && sameCursor(cur, *d.Cursor) {
			return nil // this run's cursor is already committed (a retried finalization)
		}
	}
	if rev != d.CursorRevision {
		return errclass.MarkDeterministic(fmt.Errorf("the cursor of %s moved since this run read it (another run published first); run the sync again", table))
	}
	return nil
}

func sameCursor(a, b schemas.Cursor) bool {
	x, _ := a.Encode()
	y, _ := b.Encode()
	return string(x) == string(y)
}

// commitState records the published schema and advances the cursor.
func commitState(ctx context.Context, kv jetstream.KeyValue, source string, d *schemas.Event) error {
	if _, err := kv.Put(ctx, schemas.SchemaKey(source, d.Table), d.Schema); err != nil {
		return fmt.Errorf("save schema of %s: %w", d.Table, err)
	}
	if d.Cursor == nil {
		return nil
	}
	b, err := d.Cursor.Encode()
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, schemas.CursorKey(source, d.Table), b); err != nil {
		return fmt.Errorf("save cursor of %s: %w", d.Table, err)
	}
	return nil
}

// move is a table file assembled under a temporary name.
type move struct{ tmp, final string }

// publishMoves renames each assembled file over its published name.
func publishMoves(moves []move) error {
	for _, m := range moves {
		if err := os.Rename(m.tmp, m.final); err != nil {
			return fmt.Errorf("publish %s: %w", m.final, err)
		}
		// A retried finalization can hard-link the same part again: a rename
		// between two links of one file succeeds without removing the source.
		os.Remove(m.tmp)
	}
	return nil
}
