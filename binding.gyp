{
  # sanitize=1 (scripts/build-asan.mjs passes -Dsanitize=1): an ASan+UBSan build.
  "variables": {"sanitize%": 0},
  "targets": [
    {
      "target_name": "guest_memfd",
      "sources": [
        "native/addon.cc",
        "native/common.cc",
        "native/errors.cc",
        "native/file.cc",
        "native/kvm.cc",
        "native/vm.cc",
        "native/guest_memfd.cc",
        "native/memfd.cc",
        "native/mapping.cc",
        "native/vcpu.cc",
        "native/eventfd.cc",
        "native/mempolicy.cc",
        "native/userfaultfd.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_CPP_EXCEPTIONS_ALL"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-O2"],
      "libraries": ["-lpthread"],
      "conditions": [
        ["sanitize==1", {
          "cflags_cc!": ["-O2"],
          "cflags_cc": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"],
          "ldflags": ["-fsanitize=address,undefined"]
        }]
      ]
    }
  ]
}
