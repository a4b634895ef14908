package gitops

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// testClock is os.time() in the tests: after every token in the captured objects, so an action
// on them writes exactly this.
var testClock = time.Unix(1800000000, 0)

var testVM = VM{Now: func() time.Time { return testClock }}

func sortedKinds() []string {
	kinds := make([]string, 0, len(Kinds))
	for k := range Kinds {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	return kinds
}

func load(t *testing.T, kind, rel string) map[string]any {
	t.Helper()
	obj, err := LoadObject(filepath.Join(TestdataDir(kind), rel))
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func TestHealthChecks(t *testing.T) {
	for _, kind := range sortedKinds() {
		script, err := Script(kind, "health.lua")
		if err != nil {
			t.Fatal(err)
		}
		cases, err := HealthCases(kind)
		if err != nil {
			t.Fatal(err)
		}
		if len(cases) == 0 {
			t.Errorf("%s: no health tests", kind)
		}
		for _, c := range cases {
			t.Run(kind+"/"+c.InputPath, func(t *testing.T) {
				got, err := testVM.Health(load(t, kind, c.InputPath), script)
				if err != nil {
					t.Fatal(err)
				}
				if got != c.HealthStatus {
					t.Errorf("health is %+v, health_test.yaml says %+v", got, c.HealthStatus)
				}
			})
		}
	}
}

// Every captured object has a health verdict (and a kstatus verdict, checked in kstatus_test.go).
func TestEveryCapturedObjectIsChecked(t *testing.T) {
	for _, kind := range sortedKinds() {
		cases, err := HealthCases(kind)
		if err != nil {
			t.Fatal(err)
		}
		named := map[string]bool{}
		for _, c := range cases {
			named[c.InputPath] = true
		}
		files, _ := filepath.Glob(filepath.Join(TestdataDir(kind), "*.yaml"))
		for _, f := range files {
			base := filepath.Base(f)
			if strings.HasSuffix(base, "_test.yaml") {
				continue
			}
			if !named[base] {
				t.Errorf("%s/%s is in no health test", kind, base)
			}
			if _, ok := kstatusTable[kind+"/"+base]; !ok {
				t.Errorf("%s/%s is not in the kstatus table", kind, base)
			}
		}
	}
}

func TestActionDiscovery(t *testing.T) {
	for _, kind := range sortedKinds() {
		tests, err := ActionCases(kind)
		if err != nil {
			t.Fatal(err)
		}
		script, err := Script(kind, "actions", "discovery.lua")
		if len(tests.DiscoveryTests) == 0 {
			if err == nil {
				t.Errorf("%s has a discovery.lua but no discovery tests", kind)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range tests.DiscoveryTests {
			t.Run(kind+"/"+c.InputPath, func(t *testing.T) {
				got, err := testVM.Discover(load(t, kind, c.InputPath), script)
				if err != nil {
					t.Fatal(err)
				}
				want := map[string]bool{}
				for _, a := range c.Result {
					want[a.Name] = a.Disabled
				}
				if len(got) != len(want) {
					t.Errorf("discovered %d actions, action_test.yaml lists %d", len(got), len(want))
				}
				for name, a := range got {
					disabled, ok := want[name]
					if !ok {
						t.Errorf("action %s is not in action_test.yaml", name)
					} else if a.Disabled != disabled {
						t.Errorf("action %s: disabled=%v, action_test.yaml says %v", name, a.Disabled, disabled)
					}
					if _, err := Script(kind, "actions", name, "action.lua"); err != nil {
						t.Errorf("discovered action %s has no action.lua: %v", name, err)
					}
				}
			})
		}
	}
}

func TestActions(t *testing.T) {
	for _, kind := range sortedKinds() {
		tests, err := ActionCases(kind)
		if err != nil {
			t.Fatal(err)
		}
		tested := map[string]bool{}
		for _, c := range tests.ActionTests {
			tested[c.Action] = true
			t.Run(kind+"/"+c.Action+"/"+c.InputPath, func(t *testing.T) {
				script, err := Script(kind, "actions", c.Action, "action.lua")
				if err != nil {
					t.Fatal(err)
				}
				input := load(t, kind, c.InputPath)
				result, err := testVM.Act(input, script)
				if c.ExpectedErrorMessage != "" {
					if err == nil || err.Error() != c.ExpectedErrorMessage {
						t.Fatalf("error is %v, action_test.yaml says %q", err, c.ExpectedErrorMessage)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				patch, err := MergePatch(input, result)
				if err != nil {
					t.Fatal(err)
				}
				if !sameJSON(t, patch, c.ExpectedPatch) {
					t.Errorf("patch is %s, action_test.yaml says %s", patch, c.ExpectedPatch)
				}
			})
		}
		dirs, _ := filepath.Glob(filepath.Join(CustomizationDir(kind), "actions", "*", "action.lua"))
		for _, d := range dirs {
			if name := filepath.Base(filepath.Dir(d)); !tested[name] {
				t.Errorf("%s action %s has no action test", kind, name)
			}
		}
	}
}

// A request acts once per token, so each run of a RolloutPolicy action must write a token the
// operator has not handled: in the same second, and with a clock behind the newest token.
func TestRequestTokensAreNewEachTime(t *testing.T) {
	tests, err := ActionCases("RolloutPolicy")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range tests.ActionTests {
		if c.ExpectedErrorMessage != "" {
			continue
		}
		script, err := Script("RolloutPolicy", "actions", c.Action, "action.lua")
		if err != nil {
			t.Fatal(err)
		}
		key := "fleet.molecule.ai/" + c.Action
		obj := load(t, "RolloutPolicy", c.InputPath)
		seen := map[string]bool{}
		if old := annotation(obj, key); old != "" {
			seen[old] = true
		}
		status, _ := obj["status"].(map[string]any)
		if h, ok := status["handledRequests"].(map[string]any); ok {
			if old, ok := h[c.Action].(string); ok {
				seen[old] = true
			}
		}
		for i, vm := range []VM{testVM, testVM, testVM, {Now: func() time.Time { return time.Unix(1000, 0) }}} {
			out, err := vm.Act(obj, script)
			if err != nil {
				t.Fatal(err)
			}
			token := annotation(out, key)
			if token == "" || seen[token] {
				t.Fatalf("%s on %s, run %d: token %q was written before", c.Action, c.InputPath, i+1, token)
			}
			seen[token] = true
			// The operator handled it; the annotation stays.
			status, _ := out["status"].(map[string]any)
			if status == nil {
				status = map[string]any{}
				out["status"] = status
			}
			handled, _ := status["handledRequests"].(map[string]any)
			if handled == nil {
				handled = map[string]any{}
				status["handledRequests"] = handled
			}
			handled[c.Action] = token
			obj = out
		}
	}
}

func annotation(obj map[string]any, key string) string {
	md, _ := obj["metadata"].(map[string]any)
	a, _ := md["annotations"].(map[string]any)
	v, _ := a[key].(string)
	return v
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("expectedPatch: %v", err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// The scripts use nothing Argo CD does not give them: no string or math library, no global os.
// (Running them already fails on a missing function; this names the mistake before a test case
// happens to reach it.)
func TestScriptsUseOnlyWhatArgoCDOpens(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(RepoRoot(), "deploy", "argocd", "resource_customizations", Group, "*", "*.lua"))
	more, _ := filepath.Glob(filepath.Join(RepoRoot(), "deploy", "argocd", "resource_customizations", Group, "*", "actions", "*.lua"))
	most, _ := filepath.Glob(filepath.Join(RepoRoot(), "deploy", "argocd", "resource_customizations", Group, "*", "actions", "*", "action.lua"))
	files = append(append(files, more...), most...)
	if len(files) < 10 {
		t.Fatalf("found only %d scripts", len(files))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		code := stripComments(string(data))
		for _, bad := range []string{"string.", "math.", "io.", "debug.", ":sub(", ":find(", ":match(", ":gsub(", ":format(", "os.exit", "os.getenv", "print("} {
			if strings.Contains(code, bad) {
				t.Errorf("%s uses %q, which Argo CD does not open", f, bad)
			}
		}
		if strings.Contains(code, "os.") && !strings.Contains(code, `local os = require("os")`) {
			t.Errorf(`%s uses os without local os = require("os") (Argo CD has no global os)`, f)
		}
	}
}

func stripComments(src string) string {
	var b strings.Builder
	for _, line := range strings.Split(src, "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}
