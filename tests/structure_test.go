package tests

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/agnes-ai/connector-kit/"

// services meet only on the bus: none imports another.
var services = []string{"producers", "writer", "finalizer", "internal/gateway", "internal/httpapi"}

// goFiles parses the non-test Go files under dir (recursively when deep,
// hidden folders left out) into fset.
func goFiles(t *testing.T, fset *token.FileSet, dir string, deep bool) map[string]*ast.File {
	t.Helper()
	out := map[string]*ast.File{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != dir && (!deep || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		out[p] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func imports(f *ast.File) []string {
	var out []string
	for _, s := range f.Imports {
		p, _ := strconv.Unquote(s.Path.Value)
		out = append(out, p)
	}
	return out
}

// TestPackageBoundaries: no service imports another, and the contract
// package imports no NATS package.
func TestPackageBoundaries(t *testing.T) {
	for _, svc := range services {
		for path, f := range goFiles(t, token.NewFileSet(), filepath.Join("..", svc), false) {
			for _, imp := range imports(f) {
				for _, other := range services {
					if other != svc && imp == module+other {
						t.Errorf("%s imports the service %s", path, other)
					}
				}
			}
		}
	}
	for path, f := range goFiles(t, token.NewFileSet(), filepath.Join("..", "schemas"), false) {
		for _, imp := range imports(f) {
			if strings.HasPrefix(imp, "github.com/nats-io/") {
				t.Errorf("%s imports %s: schemas is types, names and codecs", path, imp)
			}
		}
	}
}

// TestFunctionLength: no function outside tests is longer than 80 lines.
func TestFunctionLength(t *testing.T) {
	fset := token.NewFileSet()
	for p, f := range goFiles(t, fset, "..", true) {
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			if n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1; n > 80 {
				t.Errorf("%s: %s is %d lines; split it (the limit is 80)", p, fd.Name.Name, n)
			}
		}
	}
}
