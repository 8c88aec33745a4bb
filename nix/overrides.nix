# Fixes on top of the uv.lock package set (uv2nix carries no override collection by
# design). Linux wheels with compiled extensions link the C++ runtime and zlib, which
# on Nix live in the store rather than /usr/lib: hand them to the wheels' ELF patching.
# Unverified offline (docs/packaging.md); extend when `nix build` names a missing lib.
{ pkgs }:
final: prev:
let
  inherit (pkgs) lib;
  nativeLibs = [
    pkgs.stdenv.cc.cc.lib
    pkgs.zlib
  ];
  compiled = [
    "hf-xet"
    "jaxlib"
    "ml-dtypes"
    "pyarrow"
    "safetensors"
    "scann"
    "tensorstore"
    "tokenizers"
  ];
  withNativeLibs =
    name:
    prev.${name}.overrideAttrs (old: {
      buildInputs = (old.buildInputs or [ ]) ++ nativeLibs;
    });
in
lib.optionalAttrs pkgs.stdenv.isLinux (
  lib.genAttrs (builtins.filter (name: prev ? ${name}) compiled) withNativeLibs
)
