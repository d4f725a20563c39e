#pragma once
// Namespace aliases and the central types of the asynchronous code.
// <utility> first: Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace appointment_relay {
namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using error_code = boost::system::error_code;
// Every component runs on one io_context's thread, and the HTTP client's streams and coroutines use its
// executor type directly: the type-erased any_io_executor costs a copy, compare and destroy per operation
// (~6 % of the relay's CPU in a drain). So this is the concrete type, not any_io_executor.
using executor = net::io_context::executor_type;
using steady_timer = net::steady_timer;
}  // namespace appointment_relay
