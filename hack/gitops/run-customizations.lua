-- Runs Argo CD resource customizations (health.lua, actions/discovery.lua,
-- actions/<name>/action.lua) on their test fixtures, the way Argo CD runs them: the
-- object as the global `obj`, and only the libraries Argo CD opens for a script from
-- argocd-cm (base, table, and a safe `os` that `require("os")` returns; no string, no
-- math). Argo CD's interpreter is gopher-lua, a Lua 5.1: run this with lua5.1.
--
-- The cases are read from each kind's health_test.yaml and actions/action_test.yaml, in
-- the form argo-cd's own resource_customizations tests take:
--   tests: [{inputPath, healthStatus: {status, message}}]
--   discoveryTests: [{inputPath, result: [{name, disabled}]}]
--   actionTests: [{action, inputPath, expectedOutputPath}]
-- Prints one line per case and a closing "N passed, N failed"; exits 1 on any failure.
--
-- usage: lua5.1 run-customizations.lua NOW_EPOCH KIND_DIR...
--   NOW_EPOCH: the time os.date reports (actions are then reproducible); the format
--   string still goes through the real os.date.
local lyaml = require("lyaml")

local now = tonumber(arg[1])
if now == nil or #arg < 2 then
  io.stderr:write("usage: lua5.1 run-customizations.lua NOW_EPOCH KIND_DIR...\n")
  os.exit(2)
end

local passed, failed = 0, 0

local function read(path)
  local f, err = io.open(path, "r")
  if f == nil then
    return nil, err
  end
  local text = f:read("*a")
  f:close()
  return text
end

-- YAML null (lyaml.null) becomes nil, as Argo CD's decoder makes it.
local function strip_nulls(v)
  if v == lyaml.null then
    return nil
  end
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do
      out[k] = strip_nulls(x)
    end
    return out
  end
  return v
end

local function load_yaml(path)
  local text, err = read(path)
  if text == nil then
    error("cannot read " .. path .. ": " .. tostring(err))
  end
  return strip_nulls(lyaml.load(text))
end

local function deep_equal(a, b)
  if type(a) ~= type(b) then
    return false
  end
  if type(a) ~= "table" then
    return a == b
  end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

local function show(v)
  if type(v) ~= "table" then
    return string.format("%q", tostring(v))
  end
  local keys = {}
  for k in pairs(v) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = tostring(k) .. "=" .. show(v[k])
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- Runs a script file as Argo CD does and returns what it returns.
local function run_script(path, object)
  local text, err = read(path)
  if text == nil then
    error("cannot read " .. path .. ": " .. tostring(err))
  end
  local chunk, perr = loadstring(text, "@" .. path)
  if chunk == nil then
    error(perr)
  end
  local safe_os = {
    date = function(format, t) return os.date(format, t or now) end,
    time = function(t) if t == nil then return now end return os.time(t) end,
    clock = os.clock,
    difftime = os.difftime,
  }
  local env = {
    obj = object,
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = pcall, print = print, rawequal = rawequal, rawget = rawget, rawset = rawset,
    select = select, tonumber = tonumber, tostring = tostring, type = type,
    unpack = unpack, xpcall = xpcall,
    table = table,
    os = safe_os,
    require = function(name)
      if name == "os" then
        return safe_os
      end
      error("module " .. tostring(name) .. " is not available in Argo CD's Lua")
    end,
  }
  env._G = env
  setfenv(chunk, env)
  -- No string methods either ("x"):find(...): Argo CD does not open the string library.
  local string_meta = getmetatable("")
  local string_index = string_meta.__index
  string_meta.__index = nil
  local ok, result = pcall(chunk)
  string_meta.__index = string_index
  if not ok then
    error(result, 0)
  end
  return result
end

local function report(ok, label, detail)
  if ok then
    passed = passed + 1
    print("ok    " .. label .. ": " .. detail)
  else
    failed = failed + 1
    print("FAIL  " .. label .. ": " .. detail)
  end
end

local function case(label, fn)
  local ok, err = pcall(fn)
  if not ok then
    report(false, label, "error: " .. tostring(err))
  end
end

local function kind_of(dir)
  -- ".../resource_customizations/<group>/<Kind>" -> "<group>/<Kind>"
  local group, kind = dir:match("([^/]+)/([^/]+)/*$")
  return group .. "/" .. kind
end

for i = 2, #arg do
  local dir = arg[i]:gsub("/+$", "")
  local name = kind_of(dir)

  local health = load_yaml(dir .. "/health_test.yaml")
  for _, t in ipairs(health.tests or {}) do
    local label = name .. " health " .. t.inputPath
    case(label, function()
      local object = load_yaml(dir .. "/" .. t.inputPath)
      local got = run_script(dir .. "/health.lua", object)
      local want = t.healthStatus
      if type(got) ~= "table" then
        report(false, label, "health.lua returned " .. type(got) .. ", not a table")
      elseif got.status == want.status and got.message == want.message then
        report(true, label, got.status .. " " .. string.format("%q", got.message or ""))
      else
        report(false, label, "got " .. show(got) .. ", want " .. show(want))
      end
    end)
  end

  local actions_file = dir .. "/actions/action_test.yaml"
  if read(actions_file) ~= nil then
    local actions = load_yaml(actions_file)
    for _, t in ipairs(actions.discoveryTests or {}) do
      local label = name .. " discovery " .. t.inputPath
      case(label, function()
        local object = load_yaml(dir .. "/actions/" .. t.inputPath)
        local got = run_script(dir .. "/actions/discovery.lua", object)
        local ok, names = true, {}
        for _, want in ipairs(t.result) do
          local entry = got[want.name]
          local disabled = entry ~= nil and entry.disabled == true
          if entry == nil or disabled ~= (want.disabled == true) then
            ok = false
          end
          names[#names + 1] = want.name .. (disabled and " (disabled)" or "")
        end
        local count = 0
        for _ in pairs(got) do
          count = count + 1
        end
        if count ~= #t.result then
          ok = false
        end
        report(ok, label, ok and table.concat(names, ", ") or ("got " .. show(got) .. ", want " .. show(t.result)))
      end)
    end
    for _, t in ipairs(actions.actionTests or {}) do
      local label = name .. " action " .. t.action .. " " .. t.inputPath
      case(label, function()
        local object = load_yaml(dir .. "/actions/" .. t.inputPath)
        local got = run_script(dir .. "/actions/" .. t.action .. "/action.lua", object)
        local want = load_yaml(dir .. "/actions/" .. t.expectedOutputPath)
        if deep_equal(got, want) then
          report(true, label, "matches " .. t.expectedOutputPath)
        else
          report(false, label, "got " .. show(got.metadata) .. ", want " .. show(want.metadata))
        end
      end)
    end
  end
end

print(string.format("gitops: %d passed, %d failed", passed, failed))
if failed > 0 or passed == 0 then
  os.exit(1)
end
