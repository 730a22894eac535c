// Uploads one profile with CleverTap's node library, unmodified, through a
// tokenvault route. The only changes a backend makes: the vault key as the
// passcode, the route as the API endpoint, and trust for the vault's
// certificate (NODE_EXTRA_CA_CERTS, set by the caller).
const CleverTap = require("clevertap");

const clevertap = CleverTap.init(
  process.env.CT_ACCOUNT_ID,
  process.env.VAULT_KEY, // travels in X-CleverTap-Passcode; the vault swaps it
  CleverTap.REGIONS.INDIA
);
// The library builds https://<region>.api.clevertap.com/1 itself and has no
// option for another base URL: point its API object at the route.
clevertap.api.apiEndpoint = process.env.VAULT_ROUTE;

const profile = JSON.parse(process.env.PROFILE);
clevertap
  .upload([profile])
  .then((result) => {
    console.log(JSON.stringify(result));
    process.exit(result && result.status === "success" ? 0 : 1);
  })
  .catch((error) => {
    console.error(String(error));
    process.exit(1);
  });
