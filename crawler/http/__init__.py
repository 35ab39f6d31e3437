"""HTTP for the crawl: the client, one-URL fetches, redirects, body decoding and error translation."""
