package gitops

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// The test cases live in testdata/<Kind>/, next to the captured objects they name, in Argo CD's
// formats: health_test.yaml (`tests: [{healthStatus: {status, message}, inputPath}]`) and
// action_test.yaml (`discoveryTests: [{inputPath, result: [{name, disabled}]}]`, `actionTests:
// [{action, inputPath, expectedPatch | expectedErrorMessage}]`). Argo CD's actionTests name an
// expected output object; ours state the JSON merge patch Argo CD's API server sends for the
// result instead, which is the part that reaches Kubernetes.

// TestdataDir is tests/gitops/testdata/<kind>.
func TestdataDir(kind string) string {
	return filepath.Join(RepoRoot(), "tests", "gitops", "testdata", kind)
}

// HealthCase is one entry of health_test.yaml.
type HealthCase struct {
	HealthStatus HealthStatus `json:"healthStatus"`
	InputPath    string       `json:"inputPath"`
}

// DiscoveryCase is one entry of discoveryTests in action_test.yaml.
type DiscoveryCase struct {
	InputPath string   `json:"inputPath"`
	Result    []Action `json:"result"`
}

// ActionCase is one entry of actionTests in action_test.yaml.
type ActionCase struct {
	Action               string          `json:"action"`
	InputPath            string          `json:"inputPath"`
	ExpectedPatch        json.RawMessage `json:"expectedPatch,omitempty"`
	ExpectedErrorMessage string          `json:"expectedErrorMessage,omitempty"`
}

// ActionTests is action_test.yaml.
type ActionTests struct {
	DiscoveryTests []DiscoveryCase `json:"discoveryTests"`
	ActionTests    []ActionCase    `json:"actionTests"`
}

// HealthCases reads testdata/<kind>/health_test.yaml.
func HealthCases(kind string) ([]HealthCase, error) {
	var f struct {
		Tests []HealthCase `json:"tests"`
	}
	return f.Tests, readYAML(filepath.Join(TestdataDir(kind), "health_test.yaml"), &f)
}

// ActionCases reads testdata/<kind>/action_test.yaml (none for a kind without actions).
func ActionCases(kind string) (ActionTests, error) {
	var f ActionTests
	path := filepath.Join(TestdataDir(kind), "action_test.yaml")
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return f, nil
	}
	return f, readYAML(path, &f)
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
