package jira

import (
	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/apache/arrow-go/v18/arrow"
)

// Table names.
const (
	TableIssues      = "issues"
	TableComments    = "comments"
	TableChangelog   = "changelog"
	TableAttachments = "attachments"
	TableIssueLinks  = "issuelinks"
	TableRemoteLinks = "remote_links"
)

// TableNames lists the tables in catalog order.
var TableNames = []string{TableIssues, TableComments, TableChangelog, TableAttachments, TableIssueLinks, TableRemoteLinks}

var ts = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}

func str(name string) arrow.Field {
	return arrow.Field{Name: name, Type: arrow.BinaryTypes.String, Nullable: true}
}
func i64(name string) arrow.Field {
	return arrow.Field{Name: name, Type: arrow.PrimitiveTypes.Int64, Nullable: true}
}
func boolf(name string) arrow.Field {
	return arrow.Field{Name: name, Type: arrow.FixedWidthTypes.Boolean, Nullable: true}
}
func tsf(name string) arrow.Field { return arrow.Field{Name: name, Type: ts, Nullable: true} }

// key and created are the key-group and partition columns every table has;
// they are never null.
var (
	keyField     = arrow.Field{Name: "issue_key", Type: arrow.BinaryTypes.String}
	createdField = arrow.Field{Name: "issue_created", Type: ts}
)

// Schemas are the fixed Arrow schemas of the six tables. Every table carries
// issue_key (the key group: an event for an issue replaces all its rows) and
// issue_created (its month is the partition of the issue and all its child
// rows).
var Schemas = map[string]*arrow.Schema{
	TableIssues: arrow.NewSchema([]arrow.Field{
		keyField, createdField,
		str("issue_id"), str("url"), str("summary"), str("description"),
		str("issue_type"), str("status"), str("status_category"), str("priority"), str("resolution"),
		str("project_key"), str("project_name"),
		str("creator_email"), str("creator_name"), str("reporter_email"), str("reporter_name"),
		str("assignee_email"), str("assignee_name"),
		tsf("updated"), tsf("resolved"), tsf("due_date"), str("labels"),
		i64("attachment_count"), i64("comment_count"), i64("link_count"),
	}, nil),
	TableComments: arrow.NewSchema([]arrow.Field{
		keyField, createdField,
		str("comment_id"), str("author_email"), str("author_name"), str("body"),
		tsf("created"), tsf("updated"), boolf("public"), str("visibility_type"), str("visibility_value"),
	}, nil),
	TableChangelog: arrow.NewSchema([]arrow.Field{
		keyField, createdField,
		str("change_id"), str("author_email"), str("author_name"), str("field"),
		str("from_value"), str("to_value"), tsf("changed_at"),
	}, nil),
	TableAttachments: arrow.NewSchema([]arrow.Field{
		keyField, createdField,
		str("attachment_id"), str("filename"), i64("size"), str("mime_type"),
		str("author_email"), str("author_name"), tsf("created"), str("content_url"),
	}, nil),
	TableIssueLinks: arrow.NewSchema([]arrow.Field{
		keyField, createdField,
		str("link_id"), str("link_type"), str("direction"), str("linked_issue_key"),
		str("linked_summary"), str("linked_status"), str("linked_priority"),
	}, nil),
	TableRemoteLinks: arrow.NewSchema([]arrow.Field{
		keyField, createdField,
		str("remote_link_id"), str("url"), str("title"), str("application_name"), str("application_type"),
	}, nil),
}

var descriptions = map[string]string{
	TableIssues:      "Jira issues, one row per issue (latest state)",
	TableComments:    "Jira issue comments (restricted ones have public = false and a null body unless include_restricted_comments)",
	TableChangelog:   "Jira issue history, one row per changed field",
	TableAttachments: "Jira issue attachments (metadata and content URL)",
	TableIssueLinks:  "Links between Jira issues, seen from each issue",
	TableRemoteLinks: "Jira remote links (web links, Confluence pages)",
}

var primaryKeys = map[string][]string{
	TableIssues:      {"issue_key"},
	TableComments:    {"comment_id"},
	TableChangelog:   {"change_id", "field"},
	TableAttachments: {"attachment_id"},
	TableIssueLinks:  {"issue_key", "link_id"},
	TableRemoteLinks: {"issue_key", "remote_link_id"},
}

func tables() []connectors.TableInfo {
	out := make([]connectors.TableInfo, 0, len(TableNames))
	for _, n := range TableNames {
		out = append(out, connectors.TableInfo{
			Name: n, Schema: Schemas[n], Capabilities: connectors.Read | connectors.Stream,
			PrimaryKey: primaryKeys[n], Description: descriptions[n],
			Partition: &connectors.Partitioning{KeyColumn: "issue_key", TimeColumn: "issue_created", FullBackfillDeletes: true},
		})
	}
	return out
}
