"""The generic ccxt adapter (``type: ccxt``): any venue ccxt supports, through ccxt's
unified API and ccxt.pro websockets. ccxt is imported only when the adapter connects."""
