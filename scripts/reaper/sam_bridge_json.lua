-- @noindex
-- sam-bridge for REAPER: JSON (encode and decode), plain Lua 5.3/5.4. Re-exported by sam_bridge_core.

local M = {}

---------------------------------------------------------------------------------------------------
-- JSON
---------------------------------------------------------------------------------------------------

-- `null` in decoded JSON; distinct from a missing key.
M.null = setmetatable({}, { __tostring = function() return "null" end })

-- Key order of decoded objects (the daemon's `stems` object is ordered: target first).
local key_order = setmetatable({}, { __mode = "k" })

--- Keys of a decoded JSON object in document order (falls back to sorted keys for other tables).
function M.keys_in_order(obj)
  local order = key_order[obj] or {}
  local keys, listed, extra = {}, {}, {}
  for _, k in ipairs(order) do
    if obj[k] ~= nil then keys[#keys + 1] = k end
    listed[k] = true
  end
  for k in pairs(obj) do
    if not listed[k] then extra[#extra + 1] = k end
  end
  table.sort(extra, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(extra) do keys[#keys + 1] = k end
  return keys
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function encode_string(s)
  if utf8.len(s) == nil then
    error("text is not valid UTF-8: " .. s:gsub("[^\32-\126]", "?"), 0)
  end
  return '"' .. s:gsub('[\0-\31"\\]', function(c)
    return ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode_number(n)
  if n ~= n or n == math.huge or n == -math.huge then
    error("cannot write " .. tostring(n) .. " as JSON", 0)
  end
  if math.type(n) == "integer" then return string.format("%d", n) end
  local text = string.format("%.15g", n)
  if tonumber(text) ~= n then text = string.format("%.17g", n) end
  return text
end

local function is_array(t)
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  if count == 0 then return getmetatable(t) == M.array_mt end
  for i = 1, count do
    if t[i] == nil then return false end
  end
  return true
end

M.array_mt = {}
--- Marks a table as a JSON array (so an empty one encodes as [] rather than {}).
function M.array(t) return setmetatable(t or {}, M.array_mt) end

local encode_value

local function encode_table(t, seen)
  if seen[t] then error("cannot write a table that contains itself as JSON", 0) end
  seen[t] = true
  local parts = {}
  if is_array(t) then
    for i = 1, #t do parts[i] = encode_value(t[i], seen) end
    seen[t] = nil
    return "[" .. table.concat(parts, ",") .. "]"
  end
  for _, k in ipairs(M.keys_in_order(t)) do
    if type(k) ~= "string" then error("JSON object keys must be text", 0) end
    parts[#parts + 1] = encode_string(k) .. ":" .. encode_value(t[k], seen)
  end
  seen[t] = nil
  return "{" .. table.concat(parts, ",") .. "}"
end

encode_value = function(v, seen)
  local kind = type(v)
  if v == M.null or v == nil then return "null" end
  if kind == "boolean" then return v and "true" or "false" end
  if kind == "number" then return encode_number(v) end
  if kind == "string" then return encode_string(v) end
  if kind == "table" then return encode_table(v, seen) end
  error("cannot write a " .. kind .. " as JSON", 0)
end

--- JSON text for a Lua value. Objects are written with sorted keys (or their decoded order).
function M.json_encode(value)
  return encode_value(value, {})
end

local function decode_error(text, pos, what)
  local line = 1
  for _ in text:sub(1, pos - 1):gmatch("\n") do line = line + 1 end
  error(string.format("bad JSON at line %d (byte %d): %s", line, pos, what), 0)
end

local function skip_space(text, pos)
  return text:find("[^ \t\r\n]", pos) or #text + 1
end

local decode_value

local function decode_string(text, pos)
  -- pos is at the opening quote
  local parts = {}
  local i = pos + 1
  while true do
    local j = text:find('["\\\0-\31]', i)
    if not j then decode_error(text, pos, "unterminated text") end
    parts[#parts + 1] = text:sub(i, j - 1)
    local c = text:sub(j, j)
    if c == '"' then return table.concat(parts), j + 1 end
    if c ~= "\\" then decode_error(text, j, "control character inside text") end
    local e = text:sub(j + 1, j + 1)
    local simple = ({ ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r",
                      t = "\t" })[e]
    if simple then
      parts[#parts + 1] = simple
      i = j + 2
    elseif e == "u" then
      local hex = text:match("^%x%x%x%x", j + 2)
      if not hex then decode_error(text, j, "bad \\u escape") end
      local code = tonumber(hex, 16)
      i = j + 6
      if code >= 0xD800 and code <= 0xDBFF then
        local low = text:match("^\\u(%x%x%x%x)", i)
        local low_code = low and tonumber(low, 16)
        if low_code and low_code >= 0xDC00 and low_code <= 0xDFFF then
          code = 0x10000 + (code - 0xD800) * 0x400 + (low_code - 0xDC00)
          i = i + 6
        else
          code = 0xFFFD -- lone surrogate: keep the text readable rather than fail
        end
      elseif code >= 0xDC00 and code <= 0xDFFF then
        code = 0xFFFD
      end
      parts[#parts + 1] = utf8.char(code)
    else
      decode_error(text, j, "bad escape \\" .. e)
    end
  end
end

local function decode_object(text, pos)
  local obj, order = {}, {}
  key_order[obj] = order
  pos = skip_space(text, pos + 1)
  if text:sub(pos, pos) == "}" then return obj, pos + 1 end
  while true do
    if text:sub(pos, pos) ~= '"' then decode_error(text, pos, "expected a key in quotes") end
    local key
    key, pos = decode_string(text, pos)
    pos = skip_space(text, pos)
    if text:sub(pos, pos) ~= ":" then decode_error(text, pos, "expected ':'") end
    local value
    value, pos = decode_value(text, skip_space(text, pos + 1))
    if obj[key] == nil then order[#order + 1] = key end
    obj[key] = value
    pos = skip_space(text, pos)
    local c = text:sub(pos, pos)
    if c == "}" then return obj, pos + 1 end
    if c ~= "," then decode_error(text, pos, "expected ',' or '}'") end
    pos = skip_space(text, pos + 1)
  end
end

local function decode_array(text, pos)
  local arr = M.array({})
  pos = skip_space(text, pos + 1)
  if text:sub(pos, pos) == "]" then return arr, pos + 1 end
  while true do
    local value
    value, pos = decode_value(text, pos)
    arr[#arr + 1] = value
    pos = skip_space(text, pos)
    local c = text:sub(pos, pos)
    if c == "]" then return arr, pos + 1 end
    if c ~= "," then decode_error(text, pos, "expected ',' or ']'") end
    pos = skip_space(text, pos + 1)
  end
end

decode_value = function(text, pos)
  pos = skip_space(text, pos)
  local c = text:sub(pos, pos)
  if c == "{" then return decode_object(text, pos) end
  if c == "[" then return decode_array(text, pos) end
  if c == '"' then return decode_string(text, pos) end
  if text:sub(pos, pos + 3) == "true" then return true, pos + 4 end
  if text:sub(pos, pos + 4) == "false" then return false, pos + 5 end
  if text:sub(pos, pos + 3) == "null" then return M.null, pos + 4 end
  local number = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
  if number and number ~= "" and number ~= "-" then
    local value = tonumber(number)
    if value == nil then decode_error(text, pos, "bad number " .. number) end
    return value, pos + #number
  end
  decode_error(text, pos, c == "" and "unexpected end" or ("unexpected '" .. c .. "'"))
end

--- Lua value for JSON text; returns nil and a message when the text is not JSON.
function M.json_decode(text)
  if type(text) ~= "string" then return nil, "no text to read" end
  local ok, value, pos = pcall(decode_value, text, 1)
  if not ok then return nil, value end
  pos = skip_space(text, pos)
  if pos <= #text then return nil, string.format("bad JSON: extra text at byte %d", pos) end
  return value
end

return M
