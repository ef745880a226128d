package web

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// dist/app.js was built from the sources now in the tree: dist/inputs.sha256
// (written by scripts/build-web.sh) names every input and its hash. This
// needs neither Node nor the network; it cannot tell a hand-edited
// dist/app.js, only inputs changed without a rebuild.
func TestDistIsFresh(t *testing.T) {
	root := ".."
	f, err := os.Open("dist/inputs.sha256")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var listed []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, path, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("bad line in dist/inputs.sha256: %q", sc.Text())
		}
		listed = append(listed, path)
		data, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			t.Errorf("%s: %v (rebuild with scripts/build-web.sh)", path, err)
			continue
		}
		h := sha256.Sum256(data)
		if hex.EncodeToString(h[:]) != sum {
			t.Errorf("%s changed since web/dist was built: run scripts/build-web.sh and commit web/dist", path)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"proto/chat.proto", "scripts/build-web.sh", "web/package.json", "web/package-lock.json"} {
		if !slices.Contains(listed, must) {
			t.Errorf("dist/inputs.sha256 does not list %s", must)
		}
	}
	err = filepath.WalkDir("src", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".js" {
			return err // index.html and style.css are embedded as they are
		}
		if p := "web/" + filepath.ToSlash(path); !slices.Contains(listed, p) {
			t.Errorf("%s is not in web/dist: run scripts/build-web.sh and commit web/dist", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The embedded files are the page, its script (with the protobuf runtime
// bundled in) and its style sheet.
func TestFiles(t *testing.T) {
	for name, want := range map[string]string{
		"index.html": `<script src="app.js" defer></script>`,
		"app.js":     "loopchat.v1",
		"style.css":  "#messages",
	} {
		if b := Files()[name]; !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %q", name, want)
		}
	}
}
