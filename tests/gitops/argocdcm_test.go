package gitops

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The committed deploy/argocd/argocd-cm.yaml is exactly what deploy/argocd/generate writes.
func TestArgoCDConfigMapIsGenerated(t *testing.T) {
	generator := filepath.Join(RepoRoot(), "deploy", "argocd", "generate")
	out, err := exec.Command("python3", generator, "--stdout").Output()
	if err != nil {
		t.Fatalf("deploy/argocd/generate --stdout: %v", err)
	}
	committed, err := os.ReadFile(filepath.Join(RepoRoot(), "deploy", "argocd", "argocd-cm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != string(committed) {
		t.Fatal("deploy/argocd/argocd-cm.yaml differs from what deploy/argocd/generate writes: run deploy/argocd/generate and commit the result")
	}
}

// The ConfigMap reads back, the way Argo CD's settings manager reads it, as the scripts of
// deploy/argocd/resource_customizations: the same health.lua, discovery.lua and action.lua of
// every action, under keys resource.customizations.<type>.<group>_<Kind>.
func TestArgoCDConfigMapHoldsTheScripts(t *testing.T) {
	var cm struct {
		Kind string            `json:"kind"`
		Data map[string]string `json:"data"`
	}
	data, err := os.ReadFile(filepath.Join(RepoRoot(), "deploy", "argocd", "argocd-cm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Kind != "ConfigMap" {
		t.Fatalf("kind is %q", cm.Kind)
	}
	want := map[string]bool{}
	for _, kind := range sortedKinds() {
		// Argo CD splits the key in four at dots: resource, customizations, the type, and
		// <group>_<Kind>, which becomes <group>/<Kind>.
		health := "resource.customizations.health." + Group + "_" + kind
		want[health] = true
		script, err := Script(kind, "health.lua")
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data[health] != script {
			t.Errorf("%s is not %s/health.lua", health, kind)
		}
		discovery, err := Script(kind, "actions", "discovery.lua")
		if os.IsNotExist(err) {
			continue
		}
		key := "resource.customizations.actions." + Group + "_" + kind
		want[key] = true
		var actions struct {
			Discovery   string `json:"discovery.lua"`
			Definitions []struct {
				Name      string `json:"name"`
				ActionLua string `json:"action.lua"`
			} `json:"definitions"`
		}
		if err := yaml.UnmarshalStrict([]byte(cm.Data[key]), &actions); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if actions.Discovery != discovery {
			t.Errorf("%s: discovery.lua is not %s/actions/discovery.lua", key, kind)
		}
		dirs, _ := filepath.Glob(filepath.Join(CustomizationDir(kind), "actions", "*", "action.lua"))
		var names []string
		for _, d := range dirs {
			names = append(names, filepath.Base(filepath.Dir(d)))
		}
		sort.Strings(names)
		var got []string
		for _, def := range actions.Definitions {
			got = append(got, def.Name)
			script, err := Script(kind, "actions", def.Name, "action.lua")
			if err != nil {
				t.Errorf("%s: definition %s has no action.lua: %v", key, def.Name, err)
			} else if def.ActionLua != script {
				t.Errorf("%s: action.lua of %s differs from the file", key, def.Name)
			}
		}
		if strings.Join(got, ",") != strings.Join(names, ",") {
			t.Errorf("%s defines %v, the actions directory has %v", key, got, names)
		}
	}
	for k := range cm.Data {
		if !want[k] {
			t.Errorf("unexpected key %s", k)
		}
	}
}
