{
 "patcher": {
  "fileversion": 1,
  "appversion": {
   "major": 8,
   "minor": 6,
   "revision": 0,
   "architecture": "x64",
   "modernui": 1
  },
  "classnamespace": "box",
  "rect": [
   80.0,
   80.0,
   860.0,
   520.0
  ],
  "openinpresentation": 1,
  "default_fontsize": 10.0,
  "default_fontface": 0,
  "default_fontname": "Arial Bold",
  "gridonopen": 1,
  "gridsize": [
   8.0,
   8.0
  ],
  "boxanimatetime": 200,
  "description": "sam-bridge: isolate any sound in the selected clip by describing it (SAM Audio on fal).",
  "digest": "Text-prompted stem separation through the sam-bridge daemon",
  "tags": "sam-bridge separation stems",
  "boxes": [
   {
    "box": {
     "id": "obj-plugin",
     "maxclass": "newobj",
     "numinlets": 2,
     "numoutlets": 2,
     "patching_rect": [
      20,
      20,
      60,
      22
     ],
     "outlettype": [
      "signal",
      "signal"
     ],
     "text": "plugin~"
    }
   },
   {
    "box": {
     "id": "obj-plugout",
     "maxclass": "newobj",
     "numinlets": 2,
     "numoutlets": 0,
     "patching_rect": [
      20,
      60,
      60,
      22
     ],
     "text": "plugout~"
    }
   },
   {
    "box": {
     "id": "obj-js",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 7,
     "patching_rect": [
      300,
      300,
      180,
      22
     ],
     "outlettype": [
      "",
      "",
      "",
      "",
      "",
      "",
      ""
     ],
     "text": "js sam_bridge_device.js",
     "saved_object_attributes": {
      "filename": "sam_bridge_device.js",
      "parameter_enable": 0
     }
    }
   },
   {
    "box": {
     "id": "obj-thisdevice",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 3,
     "patching_rect": [
      300,
      20,
      100,
      22
     ],
     "outlettype": [
      "bang",
      "int",
      "int"
     ],
     "text": "live.thisdevice"
    }
   },
   {
    "box": {
     "id": "obj-udpsend",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      300,
      380,
      150,
      22
     ],
     "text": "udpsend 127.0.0.1 9010"
    }
   },
   {
    "box": {
     "id": "obj-udpreceive",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      520,
      20,
      100,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "udpreceive 9011"
    }
   },
   {
    "box": {
     "id": "obj-deferlow",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      520,
      60,
      60,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "deferlow"
    }
   },
   {
    "box": {
     "id": "obj-port",
     "maxclass": "live.numbox",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      640,
      20,
      60,
      15
     ],
     "outlettype": [
      "",
      "float"
     ],
     "presentation": 1,
     "presentation_rect": [
      334,
      146,
      46,
      15
     ],
     "parameter_enable": 1,
     "saved_attribute_attributes": {
      "valueof": {
       "parameter_longname": "Reply port",
       "parameter_shortname": "Reply",
       "parameter_type": 0,
       "parameter_unitstyle": 0,
       "parameter_initial_enable": 1,
       "parameter_initial": [
        9011
       ],
       "parameter_mmin": 1024.0,
       "parameter_mmax": 65535.0,
       "parameter_invisible": 1
      }
     },
     "varname": "Reply port"
    }
   },
   {
    "box": {
     "id": "obj-prepend-port",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      640,
      60,
      80,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend port"
    }
   },
   {
    "box": {
     "id": "obj-port-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      640,
      90,
      120,
      20
     ],
     "text": "reply port",
     "presentation": 1,
     "presentation_rect": [
      280,
      144,
      54,
      18
     ]
    }
   },
   {
    "box": {
     "id": "obj-menu",
     "maxclass": "umenu",
     "numinlets": 1,
     "numoutlets": 3,
     "patching_rect": [
      100,
      120,
      180,
      22
     ],
     "outlettype": [
      "int",
      "",
      ""
     ],
     "presentation": 1,
     "presentation_rect": [
      8,
      8,
      230,
      22
     ],
     "items": [
      "Describe it below ↓"
     ],
     "parameter_enable": 0
    }
   },
   {
    "box": {
     "id": "obj-prepend-preset",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      100,
      160,
      120,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend presetindex"
    }
   },
   {
    "box": {
     "id": "obj-prompt",
     "maxclass": "textedit",
     "numinlets": 1,
     "numoutlets": 4,
     "patching_rect": [
      100,
      200,
      180,
      40
     ],
     "outlettype": [
      "",
      "int",
      "",
      ""
     ],
     "presentation": 1,
     "presentation_rect": [
      8,
      36,
      300,
      40
     ],
     "keymode": 1,
     "lines": 2,
     "wordwrap": 1,
     "hint": "Describe the sound to isolate, e.g. piano playing"
    }
   },
   {
    "box": {
     "id": "obj-separate",
     "maxclass": "live.text",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      20,
      250,
      80,
      20
     ],
     "outlettype": [
      "",
      ""
     ],
     "text": "Separate",
     "presentation": 1,
     "presentation_rect": [
      246,
      8,
      62,
      22
     ],
     "texton": "Separate",
     "mode": 0,
     "parameter_enable": 1,
     "saved_attribute_attributes": {
      "valueof": {
       "parameter_longname": "Separate",
       "parameter_shortname": "Separate",
       "parameter_type": 2,
       "parameter_enum": [
        "Separate",
        "Separate"
       ],
       "parameter_invisible": 2
      }
     },
     "varname": "Separate"
    }
   },
   {
    "box": {
     "id": "obj-trigger",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      20,
      280,
      40,
      22
     ],
     "outlettype": [
      "bang",
      "bang"
     ],
     "text": "t b b"
    }
   },
   {
    "box": {
     "id": "obj-msg-separate",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      20,
      310,
      60,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "separate"
    }
   },
   {
    "box": {
     "id": "obj-cancel",
     "maxclass": "live.text",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      100,
      250,
      60,
      20
     ],
     "outlettype": [
      "",
      ""
     ],
     "text": "Cancel",
     "presentation": 1,
     "presentation_rect": [
      316,
      8,
      62,
      22
     ],
     "texton": "Cancel",
     "mode": 0,
     "parameter_enable": 1,
     "saved_attribute_attributes": {
      "valueof": {
       "parameter_longname": "Cancel",
       "parameter_shortname": "Cancel",
       "parameter_type": 2,
       "parameter_enum": [
        "Cancel",
        "Cancel"
       ],
       "parameter_invisible": 2
      }
     },
     "varname": "Cancel"
    }
   },
   {
    "box": {
     "id": "obj-msg-cancel",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      100,
      280,
      50,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "cancel"
    }
   },
   {
    "box": {
     "id": "obj-refresh",
     "maxclass": "live.text",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      170,
      250,
      60,
      20
     ],
     "outlettype": [
      "",
      ""
     ],
     "text": "Refresh",
     "presentation": 1,
     "presentation_rect": [
      316,
      36,
      62,
      22
     ],
     "texton": "Refresh",
     "mode": 0,
     "parameter_enable": 1,
     "saved_attribute_attributes": {
      "valueof": {
       "parameter_longname": "Refresh",
       "parameter_shortname": "Refresh",
       "parameter_type": 2,
       "parameter_enum": [
        "Refresh",
        "Refresh"
       ],
       "parameter_invisible": 2
      }
     },
     "varname": "Refresh"
    }
   },
   {
    "box": {
     "id": "obj-msg-refresh",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      170,
      280,
      50,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "refresh"
    }
   },
   {
    "box": {
     "id": "obj-deactivate",
     "maxclass": "live.toggle",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      240,
      250,
      15,
      15
     ],
     "outlettype": [
      ""
     ],
     "presentation": 1,
     "presentation_rect": [
      8,
      146,
      15,
      15
     ],
     "parameter_enable": 1,
     "saved_attribute_attributes": {
      "valueof": {
       "parameter_longname": "Deactivate source",
       "parameter_shortname": "Deact",
       "parameter_type": 2,
       "parameter_initial_enable": 1,
       "parameter_initial": [
        1
       ],
       "parameter_enum": [
        "off",
        "on"
       ]
      }
     },
     "varname": "Deactivate source"
    }
   },
   {
    "box": {
     "id": "obj-deactivate-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      260,
      250,
      160,
      20
     ],
     "text": "deactivate the source clip",
     "presentation": 1,
     "presentation_rect": [
      26,
      144,
      130,
      18
     ]
    }
   },
   {
    "box": {
     "id": "obj-prepend-deactivate",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      240,
      280,
      110,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend deactivate"
    }
   },
   {
    "box": {
     "id": "obj-progress",
     "maxclass": "multislider",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      500,
      380,
      200,
      12
     ],
     "outlettype": [
      "",
      ""
     ],
     "presentation": 1,
     "presentation_rect": [
      8,
      84,
      370,
      10
     ],
     "setminmax": [
      0.0,
      1.0
     ],
     "setstyle": 1,
     "size": 1,
     "orientation": 0,
     "ignoreclick": 1,
     "parameter_enable": 0
    }
   },
   {
    "box": {
     "id": "obj-status",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      500,
      410,
      300,
      40
     ],
     "text": "Looking for sam-bridge…",
     "presentation": 1,
     "presentation_rect": [
      8,
      100,
      370,
      40
     ],
     "linecount": 2
    }
   },
   {
    "box": {
     "id": "obj-help",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      20,
      460,
      600,
      20
     ],
     "text": "sam-bridge: select an audio clip, pick a preset (or describe the sound), click Separate. Needs `sam-bridge run` on this computer (see scripts/ableton/README.md)."
    }
   },
   {
    "box": {
     "id": "obj-sendport",
     "maxclass": "live.numbox",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      640,
      60,
      60,
      15
     ],
     "outlettype": [
      "",
      "float"
     ],
     "presentation": 1,
     "presentation_rect": [
      230,
      146,
      46,
      15
     ],
     "parameter_enable": 1,
     "saved_attribute_attributes": {
      "valueof": {
       "parameter_longname": "sam-bridge port",
       "parameter_shortname": "Send",
       "parameter_type": 0,
       "parameter_unitstyle": 0,
       "parameter_initial_enable": 1,
       "parameter_initial": [
        9010
       ],
       "parameter_mmin": 1024.0,
       "parameter_mmax": 65535.0,
       "parameter_invisible": 1
      }
     },
     "varname": "sam-bridge port"
    }
   },
   {
    "box": {
     "id": "obj-sendport-label",
     "maxclass": "comment",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      710,
      60,
      80,
      18
     ],
     "text": "sam-bridge port",
     "presentation": 1,
     "presentation_rect": [
      160,
      144,
      70,
      18
     ]
    }
   },
   {
    "box": {
     "id": "obj-prepend-sendport",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 1,
     "patching_rect": [
      640,
      90,
      110,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "prepend sendport"
    }
   },
   {
    "box": {
     "id": "obj-probe",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 0,
     "patching_rect": [
      480,
      380,
      150,
      22
     ],
     "text": "udpsend 127.0.0.1 9011"
    }
   },
   {
    "box": {
     "id": "obj-audition",
     "maxclass": "live.text",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      380,
      250,
      80,
      20
     ],
     "outlettype": [
      "",
      ""
     ],
     "text": "Audition",
     "presentation": 1,
     "presentation_rect": [
      316,
      62,
      62,
      18
     ],
     "texton": "Audition",
     "mode": 0,
     "parameter_enable": 1,
     "saved_attribute_attributes": {
      "valueof": {
       "parameter_longname": "Audition",
       "parameter_shortname": "Audition",
       "parameter_type": 2,
       "parameter_enum": [
        "Audition",
        "Audition"
       ],
       "parameter_invisible": 2
      }
     },
     "varname": "Audition"
    }
   },
   {
    "box": {
     "id": "obj-trigger-audition",
     "maxclass": "newobj",
     "numinlets": 1,
     "numoutlets": 2,
     "patching_rect": [
      380,
      280,
      40,
      22
     ],
     "outlettype": [
      "bang",
      "bang"
     ],
     "text": "t b b"
    }
   },
   {
    "box": {
     "id": "obj-msg-audition",
     "maxclass": "message",
     "numinlets": 2,
     "numoutlets": 1,
     "patching_rect": [
      380,
      310,
      60,
      22
     ],
     "outlettype": [
      ""
     ],
     "text": "audition"
    }
   }
  ],
  "lines": [
   {
    "patchline": {
     "source": [
      "obj-plugin",
      0
     ],
     "destination": [
      "obj-plugout",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-plugin",
      1
     ],
     "destination": [
      "obj-plugout",
      1
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-thisdevice",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-js",
      0
     ],
     "destination": [
      "obj-udpsend",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-udpreceive",
      0
     ],
     "destination": [
      "obj-deferlow",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-deferlow",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-port",
      0
     ],
     "destination": [
      "obj-prepend-port",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-prepend-port",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-js",
      1
     ],
     "destination": [
      "obj-menu",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-menu",
      0
     ],
     "destination": [
      "obj-prepend-preset",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-prepend-preset",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-prompt",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-separate",
      0
     ],
     "destination": [
      "obj-trigger",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-trigger",
      1
     ],
     "destination": [
      "obj-prompt",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-trigger",
      0
     ],
     "destination": [
      "obj-msg-separate",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-msg-separate",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-cancel",
      0
     ],
     "destination": [
      "obj-msg-cancel",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-msg-cancel",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-refresh",
      0
     ],
     "destination": [
      "obj-msg-refresh",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-msg-refresh",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-deactivate",
      0
     ],
     "destination": [
      "obj-prepend-deactivate",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-prepend-deactivate",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-js",
      2
     ],
     "destination": [
      "obj-progress",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-js",
      3
     ],
     "destination": [
      "obj-status",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-sendport",
      0
     ],
     "destination": [
      "obj-prepend-sendport",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-prepend-sendport",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-js",
      4
     ],
     "destination": [
      "obj-udpreceive",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-js",
      5
     ],
     "destination": [
      "obj-probe",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-audition",
      0
     ],
     "destination": [
      "obj-trigger-audition",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-trigger-audition",
      1
     ],
     "destination": [
      "obj-prompt",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-trigger-audition",
      0
     ],
     "destination": [
      "obj-msg-audition",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-msg-audition",
      0
     ],
     "destination": [
      "obj-js",
      0
     ]
    }
   },
   {
    "patchline": {
     "source": [
      "obj-js",
      6
     ],
     "destination": [
      "obj-separate",
      0
     ]
    }
   }
  ],
  "dependency_cache": [
   {
    "name": "sam_bridge_device.js",
    "bootpath": ".",
    "type": "TEXT",
    "implicit": 1
   }
  ],
  "autosave": 0,
  "openrect": [
   0.0,
   0.0,
   388.0,
   169.0
  ]
 }
}
