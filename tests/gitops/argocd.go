// Package gitops runs the Argo CD health checks and resource actions of deploy/argocd as Argo CD
// runs them: under gopher-lua (the version Argo CD pins), with the libraries Argo CD opens for a
// script and nothing else, and with Argo CD's conversions of the object into Lua and of the result
// back (layeh.com/gopher-json, the library Argo CD uses). An action's result becomes the JSON merge
// patch that Argo CD's API server sends to Kubernetes.
//
// What Argo CD does was read from its source (util/lua/lua.go, util/lua/oslib_safe.go,
// server/application/application.go); this is our own code following it.
package gitops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	jsonpatch "github.com/evanphx/json-patch"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/yaml"
)

// Group is the API group of the three kinds.
const Group = "fleet.molecule.ai"

// Kinds are the kinds with a health check, and their plural resource names.
var Kinds = map[string]string{
	"Tenant":        "tenants",
	"ImageChannel":  "imagechannels",
	"RolloutPolicy": "rolloutpolicies",
}

// RepoRoot is the repository's top directory (this file is in tests/gitops).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// CustomizationDir is deploy/argocd/resource_customizations/fleet.molecule.ai/<kind>, in Argo CD's
// own layout (health.lua, actions/discovery.lua, actions/<action>/action.lua).
func CustomizationDir(kind string) string {
	return filepath.Join(RepoRoot(), "deploy", "argocd", "resource_customizations", Group, kind)
}

// VM runs scripts. Now is os.time()'s clock (time.Now when nil), fixed in tests so that the
// request tokens the actions write are known.
type VM struct {
	Now func() time.Time
}

// HealthStatus is what a health.lua returns.
type HealthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// Action is one entry of what a discovery.lua returns.
type Action struct {
	Name        string `json:"name"`
	Disabled    bool   `json:"disabled"`
	DisplayName string `json:"displayName,omitempty"`
	IconClass   string `json:"iconClass,omitempty"`
}

// run executes script with the global obj set to the object and returns the JSON encoding of its
// return value (nil for a nil result). Like Argo CD: no standard library but package, base and
// table; os.time and os.date only through require("os"); one second at most.
func (vm VM) run(obj map[string]any, script string) ([]byte, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, fmt.Errorf("opening %s: %w", lib.name, err)
		}
	}
	// Argo CD also calls its OpenSafeOs here, but that registers the functions under the module
	// name "table", which OpenTable already registered, so it adds nothing: a script has no
	// global os. It preloads the safe os module, so `local os = require("os")` works.
	l.PreloadModule(lua.OsLibName, vm.safeOS)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", toLua(l, obj))

	fn, err := l.LoadString(script)
	if err != nil {
		return nil, err
	}
	l.Push(fn)
	if err := l.PCall(0, lua.MultRet, nil); err != nil {
		var apiErr *lua.ApiError
		if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
			// Argo CD drops the stack trace from what it shows.
			apiErr.StackTrace = ""
			return nil, apiErr
		}
		return nil, err
	}
	ret := l.Get(-1)
	switch ret.Type() {
	case lua.LTNil:
		return nil, nil
	case lua.LTTable:
		return luajson.Encode(ret)
	default:
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
}

// safeOS loads the os module Argo CD gives scripts: time and date only. date is gopher-lua's own
// (Argo CD's is a copy of it); time reads vm.Now without arguments and is gopher-lua's otherwise.
func (vm VM) safeOS(l *lua.LState) int {
	full := lua.NewState()
	defer full.Close()
	builtin := func(name string) lua.LGFunction {
		return full.GetField(full.GetGlobal("os"), name).(*lua.LFunction).GFunction
	}
	date, timeOf := builtin("date"), builtin("time")
	mod := l.NewTable()
	l.SetField(mod, "date", l.NewFunction(date))
	l.SetField(mod, "time", l.NewFunction(func(l *lua.LState) int {
		if l.GetTop() > 0 || vm.Now == nil {
			return timeOf(l)
		}
		l.Push(lua.LNumber(vm.Now().Unix()))
		return 1
	}))
	l.Push(mod)
	return 1
}

// toLua converts a decoded JSON value the way Argo CD's decodeValue does.
func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for k, item := range v {
			t.RawSetH(lua.LString(k), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// Health runs a health.lua. Like Argo CD: an empty table is an empty status, an unknown status
// is Unknown.
func (vm VM) Health(obj map[string]any, script string) (HealthStatus, error) {
	out, err := vm.run(obj, script)
	if err != nil || out == nil {
		return HealthStatus{}, err
	}
	if string(out) == "[]" {
		return HealthStatus{}, nil
	}
	var hs HealthStatus
	if err := json.Unmarshal(out, &hs); err != nil {
		return HealthStatus{}, err
	}
	switch hs.Status {
	case "Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing":
		return hs, nil
	}
	return HealthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
}

// Discover runs a discovery.lua and returns the actions by name.
func (vm VM) Discover(obj map[string]any, script string) (map[string]Action, error) {
	out, err := vm.run(obj, script)
	if err != nil {
		return nil, err
	}
	actions := map[string]Action{}
	if out == nil || string(out) == "[]" {
		return actions, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("discovery did not return a table of actions: %w", err)
	}
	for name, v := range raw {
		a := Action{}
		// An empty table (encoded as []) is an enabled action without settings.
		if string(v) != "[]" {
			if err := json.Unmarshal(v, &a); err != nil {
				return nil, fmt.Errorf("action %s: %w", name, err)
			}
		}
		a.Name = name
		actions[name] = a
	}
	return actions, nil
}

// Act runs an action.lua that returns the modified object (Argo CD's "old-style" action, the one
// kind these scripts use) and returns that object as Argo CD reads it back.
func (vm VM) Act(obj map[string]any, script string) (map[string]any, error) {
	// The script changes its own copy; obj stays as it was.
	out, err := vm.run(obj, script)
	if err != nil {
		return nil, err
	}
	if len(out) < 2 || out[0] != '{' {
		return nil, fmt.Errorf("the action must return the modified object, got %s", out)
	}
	var changed map[string]any
	if err := json.Unmarshal(out, &changed); err != nil {
		return nil, err
	}
	return restoreEmptyMaps(changed, obj), nil
}

// restoreEmptyMaps undoes the one loss of the Lua round trip: an empty table is encoded as [],
// so where the input had a map an empty list becomes an empty map again (Argo CD's
// cleanReturnedObj does the same).
func restoreEmptyMaps(changed, orig map[string]any) map[string]any {
	for k, nv := range changed {
		ov, ok := orig[k]
		if !ok {
			continue
		}
		switch n := nv.(type) {
		case map[string]any:
			if o, ok := ov.(map[string]any); ok {
				changed[k] = restoreEmptyMaps(n, o)
			}
		case []any:
			switch o := ov.(type) {
			case map[string]any:
				if len(n) == 0 {
					changed[k] = map[string]any{}
				}
			case []any:
				for i := range n {
					if i >= len(o) {
						break
					}
					if nm, ok := n[i].(map[string]any); ok {
						if om, ok := o[i].(map[string]any); ok {
							n[i] = restoreEmptyMaps(nm, om)
						}
					}
				}
			}
		}
	}
	return changed
}

// MergePatch is the patch Argo CD's API server sends for an action's result: a JSON merge patch
// from the live object to the result ("{}" when nothing changed).
func MergePatch(live, result map[string]any) ([]byte, error) {
	a, err := json.Marshal(live)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(result)
	if err != nil {
		return nil, err
	}
	return jsonpatch.CreateMergePatch(a, b)
}

// LoadObject reads one Kubernetes object from a YAML or JSON file, decoded as client-go decodes
// objects (integers as int64), which is what Argo CD and kstatus are given.
func LoadObject(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(js); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u.Object, nil
}

// Script reads a script of the Argo CD layout, relative to CustomizationDir(kind).
func Script(kind string, rel ...string) (string, error) {
	data, err := os.ReadFile(filepath.Join(append([]string{CustomizationDir(kind)}, rel...)...))
	return string(data), err
}
