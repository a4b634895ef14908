package gitops

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestActionsAreAcceptedByTheAPIServer sends what each action of action_test.yaml produces to a
// real API server with the CRDs installed, and fails if the server refuses it:
//
//  1. the captured input is created (its metadata.labels, annotations and spec) under a new name
//     in TESTBED_NAMESPACE;
//  2. the JSON merge patch from the input to the action's result, what Argo CD's API server
//     sends, is applied to it for real; the stored object must then hold every change of the patch;
//  3. the action's whole result, renamed into the namespace without resourceVersion, uid and the
//     like, must pass a server-side dry-run create.
//
// It needs TESTBED_KUBECONFIG (a kubeconfig allowed to create, patch and delete the three kinds in
// the namespace), TESTBED_KUBECTL (a kubectl binary) and TESTBED_NAMESPACE (an existing
// namespace), and fails without them. The objects it creates are deleted at the end.
func TestActionsAreAcceptedByTheAPIServer(t *testing.T) {
	k := Kubectl{Binary: os.Getenv("TESTBED_KUBECTL"), Kubeconfig: os.Getenv("TESTBED_KUBECONFIG")}
	ns := os.Getenv("TESTBED_NAMESPACE")
	if k.Binary == "" || k.Kubeconfig == "" || ns == "" {
		t.Fatal("TestActionsAreAcceptedByTheAPIServer needs TESTBED_KUBECONFIG, TESTBED_KUBECTL and TESTBED_NAMESPACE " +
			"(a kubeconfig of an API server with crds/ applied, a kubectl binary, an existing namespace); " +
			"run the other tests with -skip TestActionsAreAcceptedByTheAPIServer")
	}
	n := 0
	for _, kind := range sortedKinds() {
		tests, err := ActionCases(kind)
		if err != nil {
			t.Fatal(err)
		}
		resource, err := Resource(kind)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range tests.ActionTests {
			if c.ExpectedErrorMessage != "" {
				continue
			}
			n++
			name := fmt.Sprintf("gitops-%s-%s-%d", strings.ToLower(kind), c.Action, i)
			t.Run(kind+"/"+c.Action+"/"+c.InputPath, func(t *testing.T) {
				script, err := Script(kind, "actions", c.Action, "action.lua")
				if err != nil {
					t.Fatal(err)
				}
				input := load(t, kind, c.InputPath)
				result, err := testVM.Act(input, script)
				if err != nil {
					t.Fatal(err)
				}
				patch, err := MergePatch(input, result)
				if err != nil {
					t.Fatal(err)
				}

				_, _ = k.Run(nil, "delete", "-n", ns, resource, name, "--ignore-not-found", "--wait=false")
				seed := map[string]any{
					"apiVersion": input["apiVersion"],
					"kind":       input["kind"],
					"metadata":   pick(input["metadata"].(map[string]any), "labels", "annotations"),
					"spec":       input["spec"],
				}
				rename(seed, name, ns)
				if _, err := k.Run(mustJSON(t, seed), "create", "-f", "-"); err != nil {
					t.Fatalf("creating the captured input: %v", err)
				}
				t.Cleanup(func() {
					if _, err := k.Run(nil, "delete", "-n", ns, resource, name, "--ignore-not-found", "--wait=false"); err != nil {
						t.Errorf("cleanup: %v", err)
					}
				})
				stored, err := k.Patch(ns, resource, name, patch)
				if err != nil {
					t.Fatalf("the server refused the patch %s: %v", patch, err)
				}
				var p map[string]any
				if err := json.Unmarshal(patch, &p); err != nil {
					t.Fatal(err)
				}
				if missing := unapplied(p, stored, ""); len(missing) > 0 {
					t.Errorf("after the patch %s the stored object does not hold %v", patch, missing)
				}

				whole := deepCopy(t, result)
				md := whole["metadata"].(map[string]any)
				for _, f := range []string{"resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink"} {
					delete(md, f)
				}
				rename(whole, name+"-whole", ns)
				if _, err := k.Run(mustJSON(t, whole), "create", "--dry-run=server", "-f", "-"); err != nil {
					t.Errorf("the server refused the action's whole result: %v", err)
				}
			})
		}
	}
	if n == 0 {
		t.Fatal("no action test to send")
	}
}

// unapplied lists the paths of a merge patch that the object does not hold (null: absent).
func unapplied(patch map[string]any, obj map[string]any, at string) []string {
	var out []string
	for k, pv := range patch {
		path := at + "." + k
		ov, present := obj[k]
		switch pv := pv.(type) {
		case nil:
			if present {
				out = append(out, path+" absent")
			}
		case map[string]any:
			om, _ := ov.(map[string]any)
			out = append(out, unapplied(pv, om, path)...)
		default:
			if !reflect.DeepEqual(pv, ov) {
				out = append(out, fmt.Sprintf("%s = %v", path, pv))
			}
		}
	}
	return out
}

func pick(m map[string]any, keys ...string) map[string]any {
	out := map[string]any{}
	for _, k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

func rename(obj map[string]any, name, ns string) {
	md := obj["metadata"].(map[string]any)
	md["name"] = name
	md["namespace"] = ns
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func deepCopy(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	var out map[string]any
	if err := json.Unmarshal(mustJSON(t, m), &out); err != nil {
		t.Fatal(err)
	}
	return out
}
