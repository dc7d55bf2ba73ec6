package jira

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// rows builds one table's batch column by column, by name.
type rows struct {
	b   *array.RecordBuilder
	idx map[string]int
}

func newRows(mem memory.Allocator, table string) *rows {
	s := Schemas[table]
	r := &rows{b: array.NewRecordBuilder(mem, s), idx: map[string]int{}}
	for i, f := range s.Fields() {
		r.idx[f.Name] = i
	}
	return r
}

func (r *rows) str(col, v string) {
	b := r.b.Field(r.idx[col]).(*array.StringBuilder)
	if v == "" {
		b.AppendNull()
		return
	}
	b.Append(v)
}

// text writes v as it is: "" stays the empty string (a present but empty
// document), where str would write null.
func (r *rows) text(col, v string, present bool) {
	b := r.b.Field(r.idx[col]).(*array.StringBuilder)
	if !present {
		b.AppendNull()
		return
	}
	b.Append(v)
}

func (r *rows) i64(col string, v int64) { r.b.Field(r.idx[col]).(*array.Int64Builder).Append(v) }
func (r *rows) boolean(col string, v bool) {
	r.b.Field(r.idx[col]).(*array.BooleanBuilder).Append(v)
}

func (r *rows) ts(col string, t time.Time) {
	b := r.b.Field(r.idx[col]).(*array.TimestampBuilder)
	if t.IsZero() {
		b.AppendNull()
		return
	}
	b.Append(arrow.Timestamp(t.UnixMicro()))
}

// tsText parses a Jira timestamp; an unparsable one is null.
func (r *rows) tsText(col, v string) {
	t, _ := ParseTime(v)
	r.ts(col, t)
}

func (r *rows) done() arrow.RecordBatch {
	defer r.b.Release()
	return r.b.NewRecordBatch()
}

func email(u *User) string {
	if u == nil {
		return ""
	}
	return u.EmailAddress
}

func name(u *User) string {
	if u == nil {
		return ""
	}
	return u.DisplayName
}

func named(n *Named) string {
	if n == nil {
		return ""
	}
	return n.Name
}

// issueRows turns a fully fetched issue into its rows in every table. An
// empty table is left out of the map. site is the Jira base URL for the
// issue's browse link. The body of a comment restricted to a role or group
// is left null unless restricted is set; its visibility is always exported.
func issueRows(is *Issue, remote []RemoteLink, site string, restricted bool, mem memory.Allocator) (map[string]arrow.RecordBatch, time.Time, error) {
	created, err := ParseTime(is.Fields.Created)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("issue %s: created: %w", is.Key, err)
	}
	b := &issueTables{is: is, f: is.Fields, created: created, mem: mem, out: map[string]arrow.RecordBatch{}}
	b.issue(site)
	b.comments(restricted)
	b.changelog()
	b.attachments()
	b.links()
	b.remoteLinks(remote)
	return b.out, created, nil
}

// issueTables builds the rows one issue gives each table.
type issueTables struct {
	is      *Issue
	f       Fields
	created time.Time
	mem     memory.Allocator
	out     map[string]arrow.RecordBatch
}

// add keeps the n rows r holds for table.
func (b *issueTables) add(table string, r *rows, n int) {
	rec := r.done()
	if n == 0 {
		rec.Release()
		return
	}
	b.out[table] = rec
}

// head starts a row with the issue's key and creation time.
func (b *issueTables) head(r *rows) {
	r.str("issue_key", b.is.Key)
	r.ts("issue_created", b.created)
}

func (b *issueTables) issue(site string) {
	f, is := b.f, b.is
	var comments []Comment
	if f.Comment != nil {
		comments = f.Comment.Comments
	}
	r := newRows(b.mem, TableIssues)
	b.head(r)
	r.str("issue_id", is.ID)
	r.str("url", strings.TrimRight(site, "/")+"/browse/"+is.Key)
	r.str("summary", f.Summary)
	r.text("description", ADFText(f.Description), ADFPresent(f.Description))
	r.str("issue_type", named(f.IssueType))
	status, category := "", ""
	if f.Status != nil {
		status = f.Status.Name
		category = named(f.Status.StatusCategory)
	}
	r.str("status", status)
	r.str("status_category", category)
	r.str("priority", named(f.Priority))
	r.str("resolution", named(f.Resolution))
	pk, pn := "", ""
	if f.Project != nil {
		pk, pn = f.Project.Key, f.Project.Name
	}
	r.str("project_key", pk)
	r.str("project_name", pn)
	r.str("creator_email", email(f.Creator))
	r.str("creator_name", name(f.Creator))
	r.str("reporter_email", email(f.Reporter))
	r.str("reporter_name", name(f.Reporter))
	r.str("assignee_email", email(f.Assignee))
	r.str("assignee_name", name(f.Assignee))
	r.tsText("updated", f.Updated)
	var resolved, due time.Time
	if f.ResolutionDate != nil {
		resolved, _ = ParseTime(*f.ResolutionDate)
	}
	if f.DueDate != nil {
		due, _ = time.Parse("2006-01-02", *f.DueDate)
	}
	r.ts("resolved", resolved)
	r.ts("due_date", due)
	r.str("labels", strings.Join(f.Labels, ","))
	r.i64("attachment_count", int64(len(f.Attachment)))
	total := int64(len(comments))
	if f.Comment != nil && int64(f.Comment.Total) > total {
		total = int64(f.Comment.Total)
	}
	if f.Comment == nil {
		// An event's copy without the comment field: the count is unknown.
		r.b.Field(r.idx["comment_count"]).AppendNull()
	} else {
		r.i64("comment_count", total)
	}
	r.i64("link_count", int64(len(f.IssueLinks)))
	b.add(TableIssues, r, 1)

}

func (b *issueTables) comments(restricted bool) {
	var comments []Comment
	if b.f.Comment != nil {
		comments = b.f.Comment.Comments
	}
	r := newRows(b.mem, TableComments)
	for _, c := range comments {
		b.head(r)
		r.str("comment_id", c.ID)
		r.str("author_email", email(c.Author))
		r.str("author_name", name(c.Author))
		public := c.Public()
		r.text("body", ADFText(c.Body), ADFPresent(c.Body) && (public || restricted))
		r.tsText("created", c.Created)
		r.tsText("updated", c.Updated)
		r.boolean("public", public)
		vt, vv := "", ""
		if c.Visibility != nil {
			vt, vv = c.Visibility.Type, c.Visibility.Value
		} else if c.JSDPublic != nil && !*c.JSDPublic {
			vt = "internal"
		}
		r.str("visibility_type", vt)
		r.str("visibility_value", vv)
	}
	b.add(TableComments, r, len(comments))

}

func (b *issueTables) changelog() {
	is := b.is
	r := newRows(b.mem, TableChangelog)
	n := 0
	if is.Changelog != nil {
		for _, h := range is.Changelog.Histories {
			for _, it := range h.Items {
				b.head(r)
				r.str("change_id", h.ID)
				r.str("author_email", email(h.Author))
				r.str("author_name", name(h.Author))
				r.str("field", it.Field)
				r.str("from_value", deref(it.FromString))
				r.str("to_value", deref(it.ToString))
				r.tsText("changed_at", h.Created)
				n++
			}
		}
	}
	b.add(TableChangelog, r, n)

}

func (b *issueTables) attachments() {
	f := b.f
	r := newRows(b.mem, TableAttachments)
	for _, a := range f.Attachment {
		b.head(r)
		r.str("attachment_id", a.ID)
		r.str("filename", a.Filename)
		r.i64("size", a.Size)
		r.str("mime_type", a.MimeType)
		r.str("author_email", email(a.Author))
		r.str("author_name", name(a.Author))
		r.tsText("created", a.Created)
		r.str("content_url", a.Content)
	}
	b.add(TableAttachments, r, len(f.Attachment))

}

func (b *issueTables) links() {
	f := b.f
	r := newRows(b.mem, TableIssueLinks)
	for _, l := range f.IssueLinks {
		other, dir, label := l.OutwardIssue, "outward", l.Type.Outward
		if other == nil {
			other, dir, label = l.InwardIssue, "inward", l.Type.Inward
		}
		b.head(r)
		r.str("link_id", l.ID)
		r.str("link_type", firstNonEmpty(label, l.Type.Name))
		r.str("direction", dir)
		if other != nil {
			r.str("linked_issue_key", other.Key)
			r.str("linked_summary", other.Fields.Summary)
			st := ""
			if other.Fields.Status != nil {
				st = other.Fields.Status.Name
			}
			r.str("linked_status", st)
			r.str("linked_priority", named(other.Fields.Priority))
		} else {
			for _, c := range []string{"linked_issue_key", "linked_summary", "linked_status", "linked_priority"} {
				r.str(c, "")
			}
		}
	}
	b.add(TableIssueLinks, r, len(f.IssueLinks))

}

func (b *issueTables) remoteLinks(remote []RemoteLink) {
	r := newRows(b.mem, TableRemoteLinks)
	for _, l := range remote {
		b.head(r)
		r.str("remote_link_id", strconv.FormatInt(l.ID, 10))
		r.str("url", l.Object.URL)
		r.str("title", l.Object.Title)
		an, at := "", ""
		if l.Application != nil {
			an, at = l.Application.Name, l.Application.Type
		}
		r.str("application_name", an)
		r.str("application_type", at)
	}
	b.add(TableRemoteLinks, r, len(remote))
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
